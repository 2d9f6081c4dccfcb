// arlm's web page: chat or raw completion against this server's OpenAI-compatible API, streamed.
// Model output is untrusted: it only ever reaches the page through textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "arlm.conversations";
const SETTINGS = ["system", "temperature", "top_p", "top_k", "min_p", "max_tokens", "repetition_penalty", "seed",
                  "format_kind", "format_text", "api_key"];
const TOP = 5;  // alternatives shown per token

let modelName = null;
let conversations = load(STORE, []);
let current = null;  // the conversation shown
let controller = null;  // the running request's AbortController
let hideTimer = null;

function load(key, fallback) {
  try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; }
}
function save() {
  localStorage.setItem(STORE, JSON.stringify(conversations));
  localStorage.setItem("arlm.settings", JSON.stringify(Object.fromEntries(SETTINGS.map((k) => [k, $(k).value]))));
}
function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// ---- settings and request bodies -------------------------------------------------------------------
function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}
function controls() {
  const body = {
    model: modelName, stream: true, temperature: number("temperature"), top_p: number("top_p"),
    top_k: number("top_k"), min_p: number("min_p"), max_tokens: number("max_tokens"),
    repetition_penalty: number("repetition_penalty"),
  };
  const seed = number("seed");
  if (seed !== null) body.seed = seed;
  const kind = $("format_kind").value, text = $("format_text").value;
  if (kind === "json_object") body.response_format = { type: "json_object" };
  if (kind === "json_schema") body.response_format = { type: "json_schema", json_schema: { name: "output", schema: JSON.parse(text || "{}") } };
  if (kind === "regex") body.response_format = { type: "regex", regex: text };
  for (const k of Object.keys(body)) if (body[k] === null) delete body[k];
  return body;
}
function headers() {
  const h = { "Content-Type": "application/json" };
  if ($("api_key").value) h.Authorization = "Bearer " + $("api_key").value;
  return h;
}

// ---- conversations -----------------------------------------------------------------------------------
function newConversation() {
  current = { id: Date.now().toString(36), title: "new conversation", mode: $("mode").value, messages: [] };
  conversations.unshift(current);
  save();
  render();
}
function renderHistory() {
  const nav = $("history");
  nav.replaceChildren();
  for (const c of conversations) {
    const b = document.createElement("button");
    b.textContent = c.title;
    b.title = c.title;
    b.className = c === current ? "current" : "";
    b.onclick = () => { if (!controller) { current = c; $("mode").value = c.mode; render(); } };
    nav.append(b);
  }
}
function render() {
  renderHistory();
  const box = $("messages");
  box.replaceChildren();
  current.messages.forEach((m, i) => box.append(messageElement(m, i)));
  box.scrollTop = box.scrollHeight;
}
function messageElement(m, index) {
  const div = document.createElement("div");
  div.className = "msg " + (current.mode === "raw" ? "raw" : m.role);
  div.dataset.index = index;
  const role = document.createElement("span");
  role.className = "role";
  role.textContent = current.mode === "raw" ? "completion" : m.role;
  div.append(role);
  if (m.prompt !== undefined) {
    const p = document.createElement("span");
    p.className = "prompt";
    p.textContent = m.prompt;
    div.append(p);
  }
  if (m.tokens && m.tokens.length) m.tokens.forEach((t, i) => div.append(tokenSpan(t, index, i)));
  else div.append(document.createTextNode(m.content));
  return div;
}
function tokenSpan(t, msgIndex, tokIndex) {
  const s = document.createElement("span");
  s.className = "tok";
  s.textContent = t.t;
  // probability -> colour: red (unlikely) through yellow to green (likely)
  s.style.backgroundColor = `hsla(${Math.round(120 * t.p)}, 75%, 50%, 0.28)`;
  s.dataset.msg = msgIndex;
  s.dataset.tok = tokIndex;
  return s;
}

// ---- the token view: hover for alternatives, click one to continue from it ------------------------------
function showTooltip(span) {
  const m = current.messages[+span.dataset.msg], t = m.tokens[+span.dataset.tok];
  const tip = $("tooltip");
  tip.replaceChildren();
  const alts = t.top.length ? t.top : [[t.t, t.p]];
  for (const [text, p] of alts) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "alt" + (text === t.t ? " chosen" : "");
    const label = document.createElement("span");
    label.textContent = JSON.stringify(text);
    const prob = document.createElement("span");
    prob.textContent = (100 * p).toFixed(1) + "%";
    b.append(label, prob);
    b.onclick = () => { hideTooltip(); continueFrom(+span.dataset.msg, +span.dataset.tok, text, p); };
    tip.append(b);
  }
  const main = document.querySelector("main").getBoundingClientRect(), r = span.getBoundingClientRect();
  tip.style.left = Math.max(0, r.left - main.left) + "px";
  tip.style.top = (r.bottom - main.top + 4) + "px";
  tip.hidden = false;
}
function hideTooltip() { $("tooltip").hidden = true; }

async function continueFrom(msgIndex, tokIndex, text, p) {
  if (controller) return;
  const m = current.messages[msgIndex];
  const kept = m.tokens.slice(0, tokIndex).concat([{ t: text, p, top: [] }]);
  current.messages.length = msgIndex + 1;
  m.tokens = kept;
  m.content = kept.map((t) => t.t).join("");
  render();
  if (current.mode === "raw") await generate({ prompt: m.prompt + m.content }, m, "/v1/completions");
  else await generate({ messages: chatMessages(), continue_final_message: true }, m, "/v1/chat/completions");
}

// ---- sending and streaming ---------------------------------------------------------------------------------
function chatMessages() {
  const system = $("system").value.trim();
  const msgs = current.messages.map((m) => ({ role: m.role, content: m.content }));
  return system ? [{ role: "system", content: system }, ...msgs] : msgs;
}
async function send(text) {
  if (controller || !text.trim()) return;
  if (current.mode !== $("mode").value) newConversation();
  if (current.messages.length === 0) current.title = text.slice(0, 60);
  if (current.mode === "raw") {
    const m = { role: "assistant", prompt: text, content: "", tokens: [] };
    current.messages = [m];
    render();
    await generate({ prompt: text }, m, "/v1/completions");
  } else {
    current.messages.push({ role: "user", content: text });
    const m = { role: "assistant", content: "", tokens: [] };
    const msgs = chatMessages();
    current.messages.push(m);
    render();
    await generate({ messages: msgs }, m, "/v1/chat/completions");
  }
}
async function generate(extra, m, route) {
  if (!modelName) {
    try { await fetchModel(); } catch (e) { setStatus(String(e.message || e), true); return; }
  }
  let body;
  try { body = Object.assign(controls(), extra); } catch (e) { setStatus("the JSON schema is not valid JSON: " + e.message, true); return; }
  if (route.endsWith("chat/completions")) { body.logprobs = true; body.top_logprobs = TOP; } else body.logprobs = TOP;
  controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  setStatus("generating…");
  const start = m.tokens.length, startText = m.content.length;
  let reason = null;
  try {
    const r = await fetch(route, { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || r.statusText);
    }
    reason = await readStream(r, m);
    trimTokens(m, start, startText);
    setStatus(reason === "length" ? "stopped at max tokens" : "");
  } catch (e) {
    if (e.name === "AbortError") setStatus("stopped");
    else setStatus(String(e.message || e), true);
  } finally {
    controller = null;
    $("send").disabled = false; $("stop").disabled = true;
    save();
    render();
    poll();
  }
}
async function readStream(response, m) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  const el = document.querySelector(`.msg[data-index="${current.messages.indexOf(m)}"]`);
  let buffer = "", reason = null;
  poll();  // the header's running count, now rather than at the next tick
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    // Everything that arrived in this read goes into the page at once, and the view scrolls at most once a
    // frame: appending and scrolling per token lays the growing reply out again each time, and a long, fast
    // stream then keeps the page too busy to answer the stop button.
    const spans = document.createDocumentFragment();
    let cut, finished = false;
    while (!finished && (cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") { finished = true; break; }
      for (const choice of JSON.parse(data).choices || []) {
        for (const t of chunkTokens(choice)) {
          m.tokens.push(t);
          spans.append(tokenSpan(t, +el.dataset.index, m.tokens.length - 1));
        }
        m.content += choice.delta ? (choice.delta.content || "") : (choice.text || "");
        if (choice.finish_reason) reason = choice.finish_reason;
      }
    }
    el.append(spans);
    scrollToEnd();
    if (finished) return reason;
  }
  return reason;
}
let scrollPending = false;
function scrollToEnd() {
  if (scrollPending) return;
  scrollPending = true;
  requestAnimationFrame(() => { scrollPending = false; $("messages").scrollTop = $("messages").scrollHeight; });
}
function chunkTokens(choice) {
  const lp = choice.logprobs;
  if (!lp) return [];
  if (lp.content) return lp.content.map((e) => ({ t: e.token, p: Math.exp(e.logprob),
    top: e.top_logprobs.map((a) => [a.token, Math.exp(a.logprob)]) }));
  return lp.tokens.map((tok, i) => ({ t: tok, p: Math.exp(lp.token_logprobs[i]),
    top: Object.entries(lp.top_logprobs[i] || {}).map(([a, v]) => [a, Math.exp(v)]) }));
}
// A stop string is generated as tokens but not returned as text: drop the tokens past the text.
function trimTokens(m, start, startText) {
  let room = m.content.length - startText;
  const kept = m.tokens.slice(0, start);
  for (const t of m.tokens.slice(start)) {
    if (room <= 0) break;
    kept.push(t.t.length <= room ? t : Object.assign({}, t, { t: t.t.slice(0, room) }));
    room -= t.t.length;
  }
  m.tokens = kept;
}

// ---- wiring -------------------------------------------------------------------------------------------------
function exportJSON() {
  const data = conversations.map((c) => ({ title: c.title, mode: c.mode,
    messages: c.messages.map((m) => (m.prompt !== undefined ? { prompt: m.prompt, completion: m.content } : { role: m.role, content: m.content })) }));
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
  a.download = "arlm-conversations.json";
  a.click();
  URL.revokeObjectURL(a.href);
}
async function poll() {
  try {
    const h = await (await fetch("/health")).json();
    $("running").textContent = h.status === "ok" ? `${h.running} running · ${h.waiting} waiting` : h.status;
  } catch { $("running").textContent = "server unreachable"; }
}
async function fetchModel() {
  const r = await fetch("/v1/models", { headers: headers() });
  const data = await r.json();
  if (!r.ok) { $("model").textContent = "model unavailable"; throw new Error(data.error ? data.error.message : r.statusText); }
  modelName = data.data[0].id;
  $("model").textContent = `${modelName} · ${data.data[0].max_model_len} tokens of context`;
}
async function init() {
  const settings = load("arlm.settings", {});
  for (const k of SETTINGS) if (settings[k] !== undefined) $(k).value = settings[k];
  const dark = load("arlm.dark", window.matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.classList.toggle("dark", dark);
  $("theme").onclick = () => {
    const on = document.documentElement.classList.toggle("dark");
    localStorage.setItem("arlm.dark", JSON.stringify(on));
  };
  $("toggle-settings").onclick = () => {
    $("settings").hidden = !$("settings").hidden;
    $("toggle-settings").setAttribute("aria-expanded", String(!$("settings").hidden));
  };
  $("composer").onsubmit = (e) => { e.preventDefault(); const t = $("input").value; $("input").value = ""; send(t); };
  $("input").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); } };
  $("stop").onclick = () => controller && controller.abort();
  $("new").onclick = () => { if (!controller) newConversation(); };
  $("export").onclick = exportJSON;
  $("mode").onchange = () => { if (!controller) newConversation(); };
  for (const k of SETTINGS) $(k).onchange = save;
  $("messages").addEventListener("mouseover", (e) => {
    if (e.target.classList.contains("tok")) { clearTimeout(hideTimer); showTooltip(e.target); }
  });
  $("messages").addEventListener("mouseout", (e) => {
    if (e.target.classList.contains("tok")) hideTimer = setTimeout(hideTooltip, 400);
  });
  $("tooltip").onmouseenter = () => clearTimeout(hideTimer);
  $("tooltip").onmouseleave = () => { hideTimer = setTimeout(hideTooltip, 200); };
  current = conversations[0] || null;
  if (!current) newConversation(); else { $("mode").value = current.mode; render(); }
  fetchModel().catch((e) => setStatus(String(e.message || e), true));
  poll();
  setInterval(poll, 1000);
}
init();
