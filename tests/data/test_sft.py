"""Fine-tuning data: prompt masking, chat templates (ours and a Hugging Face one, checked against
transformers), packing and padding, context fitting for chat, and clear errors for bad records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arlm.data.loader import collate
from arlm.data.sft import DEFAULT_CHAT_TEMPLATE, ChatTemplate, SFTData, encode_example, fit_messages
from arlm.errors import UserError
from arlm.tokenizers import CharTokenizer, PretrainedTokenizer
from tests.interop.hf_models import bpe_tokenizer

CHARS = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,:?!'\n"])

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is there?"},
                {"role": "assistant", "content": "Nay, answer me."}, {"role": "user", "content": "Long live the king!"},
                {"role": "assistant", "content": "Bernardo?"}]


def trained_text(tok, ex) -> list[str]:
    """The decoded runs of trained tokens, with the end-of-text id shown as <eot>."""
    runs, cur = [], []
    for i, t in zip(ex.ids.tolist(), ex.trained.tolist()):
        if t:
            cur.append("<eot>" if i == tok.eot_id else tok.decode([i]))
        elif cur:
            runs.append("".join(cur))
            cur = []
    return runs + (["".join(cur)] if cur else [])


def test_prompt_completion_masks_the_prompt():
    ex = encode_example({"prompt": "Who is there?\n", "completion": "Nay, answer me."}, CHARS, None)
    n_prompt = len("Who is there?\n")
    assert CHARS.decode(ex.ids.tolist()) == "Who is there?\nNay, answer me."
    assert ex.ids[-1] == CHARS.eot_id  # the model learns to stop
    assert not ex.trained[:n_prompt].any() and ex.trained[n_prompt:].all()
    x, y = ex.xy()
    assert (y[:n_prompt - 1] == -1).all()  # no loss on predicting prompt tokens
    assert (y[n_prompt - 1:] == ex.ids[n_prompt:]).all()  # the first completion token is predicted from the prompt
    assert (x == ex.ids[:-1]).all()


def test_default_template_trains_only_assistant_turns():
    t = ChatTemplate.for_model(CHARS)
    assert t.source == DEFAULT_CHAT_TEMPLATE
    text = t.render(CONVERSATION, add_generation_prompt=False)
    assert text == ("Be brief.\n\nUser: Who is there?\nAssistant: Nay, answer me.<|endoftext|>"
                    "User: Long live the king!\nAssistant: Bernardo?<|endoftext|>")
    ex = encode_example({"messages": CONVERSATION}, CHARS, t)
    assert trained_text(CHARS, ex) == ["Nay, answer me.<eot>", "Bernardo?<eot>"]
    # a chat prompt at inference is encoded exactly as the same context was in training
    prompt = t.prompt_ids(CONVERSATION[:4])
    assert ex.ids[:len(prompt)].tolist() == prompt


def test_hf_chat_template_matches_transformers(tmp_path):
    """A tokenizer's own chat_template is used, renders as transformers renders it, and its special
    end-of-turn token is part of what the model learns."""
    tf = pytest.importorskip("transformers")
    raw = bpe_tokenizer()
    raw.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    hf = tf.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", bos_token="<|endoftext|>")
    hf.chat_template = CHATML
    hf.save_pretrained(tmp_path)
    tok = PretrainedTokenizer.from_dir(tmp_path)
    t = ChatTemplate.for_model(tok)
    assert t.source == CHATML
    for gen in (False, True):
        ours = t.render(CONVERSATION[:4] if gen else CONVERSATION, add_generation_prompt=gen)
        theirs = hf.apply_chat_template(CONVERSATION[:4] if gen else CONVERSATION, tokenize=False, add_generation_prompt=gen)
        assert ours == theirs
    ex = encode_example({"messages": CONVERSATION}, tok, t)
    full = hf.apply_chat_template(CONVERSATION, tokenize=False)
    assert tok.decode(ex.ids.tolist()).replace(" ", "") == hf.decode(hf(full)["input_ids"], skip_special_tokens=True).replace(" ", "")
    im_end = tok.tok.token_to_id("<|im_end|>")
    trained = ex.ids[ex.trained].tolist()
    assert trained.count(im_end) == 2 and tok.decode(trained) == "Nay, answer me.\nBernardo?\n"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_sft_data_split_padding_and_packing(tmp_path):
    recs = [{"prompt": "ab" * (i % 3 + 1), "completion": "cd" * (i % 4 + 1)} for i in range(10)]
    f = write_jsonl(tmp_path / "d.jsonl", recs)
    d = SFTData(f, CHARS, block_size=16, val_fraction=0.2)
    assert len(d.train) == 8 and len(d.val) == 2
    assert d.val[0].ids.tolist()[:2] == CHARS.encode("ab")  # the last examples are held out (record 9: "ab")
    x, y = collate(d.rows([0, 1], 16), pad_id=CHARS.eot_id)
    lengths = [len(d.train[i].ids) - 1 for i in (0, 1)]
    assert x.shape == (2, max(lengths))
    assert (y[0, lengths[0]:] == -1).all() and (x[0, lengths[0]:] == CHARS.eot_id).all()
    packed = SFTData(f, CHARS, block_size=16, val_fraction=0.2, packing=True)
    rows = packed.rows([0, 5], 16)
    assert all(len(r[0]) == 16 and len(r[1]) == 16 for r in rows)
    stream = np.concatenate([ex.ids for ex in packed.train])
    assert (rows[1][0] == stream[5:21]).all()
    labels = np.concatenate([np.where(ex.trained, ex.ids, -1) for ex in packed.train])
    assert (rows[1][1] == labels[6:22]).all()
    assert packed.sampling(16) == (len(stream), 16, 1)


def test_long_examples_are_cut_and_unlearnable_ones_skipped(tmp_path, caplog):
    recs = [{"prompt": "a" * 30, "completion": "b"}, {"prompt": "a", "completion": "b" * 30}, {"prompt": "c", "completion": "d"}]
    d = SFTData(write_jsonl(tmp_path / "d.jsonl", recs), CHARS, block_size=8, val_fraction=0.4)
    assert len(d.train) + len(d.val) == 2  # the first has no completion token inside 8 + 1 tokens
    assert all(len(ex.ids) <= 9 for ex in d.train + d.val)
    assert "skipped" in caplog.text and "cut to fit" in caplog.text


@pytest.mark.parametrize("line, pattern", [
    ('{"text": "x"}', "expected .*prompt.*completion.*messages"),
    ('{"prompt": "a", "completion": ""}', "completion' is empty"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "message 1 must be"),
    ('[1, 2]', "expected"),
    ('{"prompt": "a", "completion": ', "line 2: not valid JSON"),
])
def test_bad_records_name_the_example(tmp_path, line, pattern):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=pattern):
        SFTData(f, CHARS, block_size=16, val_fraction=0.5)


def test_characters_outside_the_vocabulary_name_the_example(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "9", "completion": "b"}])
    with pytest.raises(UserError, match="example 2: .*'9'"):
        SFTData(f, CHARS, block_size=16, val_fraction=0.5)


def test_fit_messages_drops_oldest_turns_never_the_system_prompt():
    t = ChatTemplate.for_model(CHARS)
    system = [{"role": "system", "content": "Be brief."}]
    turns = [{"role": "user", "content": "a" * 20}, {"role": "assistant", "content": "b" * 20},
             {"role": "user", "content": "c" * 20}, {"role": "assistant", "content": "d" * 20},
             {"role": "user", "content": "Who is there?"}]
    full = len(t.prompt_ids(system + turns))
    ids, dropped, room = fit_messages(t.prompt_ids, system, turns, block_size=full + 10, max_new_tokens=10)
    assert dropped == 0 and room == 10 and len(ids) == full
    # not enough room: the first user/assistant pair goes, the system prompt stays
    ids, dropped, room = fit_messages(t.prompt_ids, system, turns, block_size=full + 5, max_new_tokens=10)
    assert dropped == 2 and CHARS.decode(ids).startswith("Be brief.\n\nUser: ccc") and len(ids) + room <= full + 5
    # only the newest message fits: everything before it goes; the reply is shortened to the room left
    last = len(t.prompt_ids(system + turns[-1:]))
    ids, dropped, room = fit_messages(t.prompt_ids, system, turns, block_size=last + 20, max_new_tokens=100)
    assert dropped == 4 and room == 20 and CHARS.decode(ids).endswith("User: Who is there?\nAssistant: ")
    with pytest.raises(UserError, match="too long"):
        fit_messages(t.prompt_ids, system, turns, block_size=last + 2, max_new_tokens=100)


def test_bad_template_is_a_user_error():
    with pytest.raises(UserError, match="not valid Jinja"):
        ChatTemplate("{% for m in messages %}", CHARS)
    t = ChatTemplate("{{ raise_exception('only user turns') }}", CHARS)
    with pytest.raises(UserError, match="only user turns"):
        t.render(CONVERSATION, add_generation_prompt=False)
