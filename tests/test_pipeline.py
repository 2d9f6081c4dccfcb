"""arlm.pipeline against transformers.pipeline on the same tiny random Hugging Face folders: the same
labels, entities, words, spans and scores (within 1e-4), generated text identical; the v4
question-answering shape from our own head; and every refusal by name."""

from __future__ import annotations

import pytest
import torch

import arlm
from arlm.errors import UserError
from tests.interop.hf_models import bpe_tokenizer, hf_config, make_hf_model

tf = pytest.importorskip("transformers")

TEXTS = ["Enter Hamlet, reading on a book.", "My lord, I have remembrances of yours", "O"]


def head_folder(path, kind: str, head: str, labels: list[str] | None, seed: int = 0):
    extra = {} if labels is None else {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                       "label2id": {x: i for i, x in enumerate(labels)}}
    torch.manual_seed(seed)
    cfg = hf_config(kind, pad_token_id=0, **extra)
    model = getattr(tf, f"{ {'gpt2': 'GPT2', 'llama': 'Llama'}[kind]}For{head}")(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer(), eos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>")
    tok.save_pretrained(path)
    return model, tok


def close(ours, theirs, keys_exact, tol=1e-4):
    assert len(ours) == len(theirs), (ours, theirs)
    for a, b in zip(ours, theirs):
        assert set(a) == set(b)
        for k in a:
            if k == "score":
                assert abs(float(a[k]) - float(b[k])) <= tol
            else:
                assert a[k] == b[k], (k, a, b)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_text_classification_matches_transformers(tmp_path, kind):
    model, tok = head_folder(tmp_path, kind, "SequenceClassification", ["comedy", "history", "tragedy"])
    theirs = tf.pipeline("text-classification", model=model, tokenizer=tok)
    ours = arlm.pipeline("sentiment-analysis", model=tmp_path)
    close(ours(TEXTS[0]), theirs(TEXTS[0]), ())
    close(ours(TEXTS), theirs(TEXTS), ())
    for a, b in zip(ours(TEXTS, top_k=None), theirs(TEXTS, top_k=None)):
        close(a, b, ())
    close(ours(TEXTS[1], top_k=2), theirs(TEXTS[1], top_k=2), ())
    close(ours(TEXTS[1], top_k=1), theirs(TEXTS[1], top_k=1), ())
    for f in ("sigmoid", "none"):
        close(ours(TEXTS[1], function_to_apply=f, top_k=None), theirs(TEXTS[1], function_to_apply=f, top_k=None), ())


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_transformers(tmp_path, strategy):
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    model, tok = head_folder(tmp_path, "gpt2", "TokenClassification", labels, seed=3)
    # the output labels' biases lifted, so that entities (not only "O") are predicted
    text = "Enter Hamlet and Horatio, at Elsinore in Denmark; remembrances of yours."
    theirs = tf.pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy=strategy)
    ours = arlm.pipeline("ner", model=tmp_path, aggregation_strategy=strategy)
    want = theirs(text)
    got = ours(text)
    assert want, "the random head should predict some entities"
    close(got, want, ())
    close(ours([text, TEXTS[0]])[1], theirs([text, TEXTS[0]])[1], ())
    everything = ours(text, ignore_labels=[])
    assert len(everything) >= len(got)


def test_token_classification_long_text_in_windows(tmp_path):
    """A text longer than the window is read in windows overlapping by half; the first window's tokens
    are labelled exactly as when read alone."""
    labels = ["O", "B-PER", "I-PER"]
    head_folder(tmp_path, "gpt2", "TokenClassification", labels, seed=1)
    ours = arlm.pipeline("token-classification", model=tmp_path, ignore_labels=[])
    short = "Enter Hamlet and Horatio. " * 4
    long = short * 20  # past the 128-token window
    got, alone = ours(long), ours(short)
    assert len(got) > 128
    assert got[:len(alone) - 2] == alone[:len(alone) - 2]
    assert got[-1]["end"] == len(long)  # every token labelled, the last one too


def test_feature_extraction_matches_transformers(tmp_path):
    make_hf_model(tmp_path, "llama")
    theirs = tf.pipeline("feature-extraction", model=str(tmp_path))
    ours = arlm.pipeline("feature-extraction", model=tmp_path)
    a, b = torch.tensor(ours(TEXTS[0])), torch.tensor(theirs(TEXTS[0]))
    assert a.shape == b.shape and a.shape[0] == 1
    assert float((a - b).abs().max()) < 1e-4
    batch = ours(TEXTS, return_tensors=True)
    assert [t.shape[1] for t in batch] == [len(theirs(t)[0]) for t in TEXTS]
    assert torch.allclose(batch[0], a, atol=1e-5)  # padded batch == one at a time


def test_text_generation_matches_transformers(tmp_path):
    make_hf_model(tmp_path, "gpt2")
    theirs = tf.pipeline("text-generation", model=str(tmp_path))
    ours = arlm.pipeline("text-generation", model=tmp_path)
    for prompt in TEXTS[:2]:
        want = theirs(prompt, max_new_tokens=12, do_sample=False)
        assert ours(prompt, max_new_tokens=12) == want
    got = ours(TEXTS[:2], max_new_tokens=5, return_full_text=False)
    assert len(got) == 2 and all(len(g) == 1 and set(g[0]) == {"generated_text"} for g in got)
    assert got[0][0]["generated_text"] == theirs(TEXTS[0], max_new_tokens=5, do_sample=False,
                                                 return_full_text=False)[0]["generated_text"]
    two = ours(TEXTS[0], max_new_tokens=4, do_sample=True, num_return_sequences=2, seed=1)
    assert len(two) == 2 and all(g["generated_text"].startswith(TEXTS[0]) for g in two)


def test_text_generation_chat_messages(tmp_path):
    make_hf_model(tmp_path, "gpt2")
    ours = arlm.pipeline("text-generation", model=tmp_path, max_new_tokens=6)
    messages = [{"role": "user", "content": "Who is there?"}]
    out = ours(messages)
    assert len(out) == 1 and out[0]["generated_text"][:-1] == messages
    assert out[0]["generated_text"][-1]["role"] == "assistant"
    lm = arlm.load(tmp_path)
    template = lm.chat_template()
    want = lm.generate_config(max_new_tokens=6, temperature=0.0)
    ids = template.prompt_ids(messages)
    reply = "".join(p for _, p in lm._stream_ids(ids, __import__("dataclasses").replace(want, stop=want.stop + template.stop)))
    assert out[0]["generated_text"][-1]["content"] == reply.strip()
    both = ours([messages, messages + [{"role": "assistant", "content": "Nay"}, {"role": "user", "content": "Stand"}]])
    assert len(both) == 2 and both[0] == out
    assert ours(messages, return_full_text=False)[0]["generated_text"] == reply.strip()


def test_question_answering_v4_shape(tmp_path):
    head_folder(tmp_path, "gpt2", "QuestionAnswering", None, seed=2)
    qa = arlm.pipeline("question-answering", model=tmp_path)
    context = "Hamlet is the Prince of Denmark. His father's ghost walks the walls of Elsinore at night."
    one = qa(question="Where does the ghost walk?", context=context)
    assert set(one) == {"score", "start", "end", "answer"}
    assert one["answer"] == context[one["start"]:one["end"]] and 0 < one["score"] <= 1
    assert qa({"question": "Where does the ghost walk?", "context": context}) == one
    three = qa(question="Where does the ghost walk?", context=context, top_k=3)
    assert len(three) == 3 and three[0] == one and three[0]["score"] >= three[1]["score"] >= three[2]["score"]
    assert all(len(qa.lm.tokenizer.encode(a["answer"])) <= 15 for a in three)
    many = qa([{"question": "Who?", "context": context}] * 2 + [{"question": "Where does the ghost walk?", "context": context}])
    assert len(many) == 3 and many[2] == one
    long = qa(question="Where does the ghost walk?", context=context + " Filler text." * 60)  # past the window
    assert long["answer"] == (context + " Filler text." * 60)[long["start"]:long["end"]]


def test_summarization_on_an_encoder_decoder(tmp_path):
    from tests.interop.seq2seq_models import make_seq2seq, word_tokenizer

    hf = make_seq2seq(tf, "t5", tmp_path)
    word_tokenizer(tf, 99).save_pretrained(tmp_path)
    lm = arlm.load(tmp_path)
    source = ["the cat sat on the mat", "a big red dog ran to the house"]
    s = arlm.pipeline("summarization", model=lm, max_new_tokens=6)
    one = s(source[0])
    assert one == [{"summary_text": lm.generate(source[0], max_new_tokens=6, temperature=0.0)}]
    assert s(source) == [one[0], s(source[1])[0]]
    t = arlm.pipeline("translation_en_to_fr", model=lm, max_new_tokens=6)
    assert t(source[0]) == [{"translation_text": one[0]["summary_text"]}]
    assert arlm.pipeline("text2text-generation", model=lm, max_new_tokens=6)(source[0])[0]["generated_text"] == one[0]["summary_text"]
    beams = s(source[0], num_beams=3, num_return_sequences=2)
    assert len(beams) == 2 and beams[0]["summary_text"] == lm.generate(source[0], max_new_tokens=6, num_beams=3)
    with pytest.raises(UserError, match="encoder-decoder"):
        arlm.pipeline("text-generation", model=lm)
    # features of an encoder-decoder: its encoder's output over the source
    ids = torch.tensor([lm.tokenizer.encode_prompt(source[1])])  # with the </s> the encoder reads in generation
    with torch.no_grad():
        want = hf.encoder(input_ids=ids).last_hidden_state
    got = torch.tensor(arlm.pipeline("feature-extraction", model=lm)(source[1]))
    assert got.shape == want.shape and float((got - want).abs().max()) < 1e-4


def test_refusals(tmp_path):
    make_hf_model(tmp_path / "lm", "gpt2")
    head_folder(tmp_path / "cls", "gpt2", "SequenceClassification", ["a", "b"])
    cases = [
        (lambda: arlm.pipeline("fill-mask", model=tmp_path / "lm"), "masked-language-model"),
        (lambda: arlm.pipeline("zero-shot-classification", model=tmp_path / "lm"), "unknown pipeline task"),
        (lambda: arlm.pipeline("text-classification", model=tmp_path / "lm"), "has no task head"),
        (lambda: arlm.pipeline("ner", model=tmp_path / "cls"), "has a text classification head"),
        (lambda: arlm.pipeline("text-generation", model=tmp_path / "cls"), "labels text instead of writing it"),
        (lambda: arlm.pipeline("summarization", model=tmp_path / "lm"), "decoder-only"),
        (lambda: arlm.pipeline("text-classification", model=tmp_path / "cls", top_k=0), "top_k must be"),
        (lambda: arlm.pipeline("text-classification", model=tmp_path / "cls", colour=1), "unknown text-classification option"),
        (lambda: arlm.pipeline("text-classification", model=tmp_path / "cls")([]), "non-empty list"),
        (lambda: arlm.pipeline("text-classification", model=tmp_path / "cls")(3), "string or a non-empty list"),
        (lambda: arlm.pipeline("text-generation", model=tmp_path / "lm")("x", max_length=5), "max_new_tokens"),
        (lambda: arlm.pipeline("text-generation", model=tmp_path / "lm")("x", temprature=1), "unknown generation option"),
        (lambda: arlm.pipeline("text-generation", model=tmp_path / "lm")([{"role": "king", "content": "x"}]), "message 0"),
        (lambda: arlm.pipeline("text-generation", model=tmp_path / "lm", batch_size=0), "batch_size"),
        (lambda: arlm.pipeline("text-generation", model=3), "model must be"),
        (lambda: arlm.pipeline("feature-extraction", model=tmp_path / "lm")("x", return_tensors="pt"), "return_tensors"),
        (lambda: arlm.pipeline("token-classification", model=tmp_path / "cls"), "token classification head"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()


def test_question_answering_refusals(tmp_path):
    head_folder(tmp_path, "gpt2", "QuestionAnswering", None)
    qa = arlm.pipeline("question-answering", model=tmp_path)
    for call, message in [
        (lambda: qa(question="Who?"), "question= and context="),
        (lambda: qa({"question": "Who?"}), "expected"),
        (lambda: qa({"question": "", "context": "x"}), "non-empty"),
        (lambda: qa(question=["a", "b"], context=["x", "y", "z"]), "2 questions and 3 contexts"),
        (lambda: qa(question="a", context="b", top_k=0), "top_k"),
        (lambda: qa(question="a", context="b", max_answer_len=-1), "max_answer_len"),
    ]:
        with pytest.raises(UserError, match=message):
            call()
