"""Token datasets: modular arithmetic answers and split, character windows, the checked tiny-shakespeare download."""

import hashlib

import pytest
import torch
from test_sources import server  # noqa: F401 -- a real HTTP server on 127.0.0.1, the only mirror

from ticketlab import sources, tokens
from ticketlab.cli import main
from ticketlab.config import DataConfig
from ticketlab.data import batches, load_configured, load_dataset
from ticketlab.errors import TicketlabError
from ticketlab.training.objectives import LANGUAGE_MODEL, LAST_TOKEN


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_modular_answers_are_exact_for_every_equation(op):
    p = 7
    ds = load_dataset("modular", options={"modulus": p, "operation": op, "train_fraction": 0.5})
    x, y = torch.cat([ds.train.x, ds.test.x]), torch.cat([ds.train.y, ds.test.y])
    pairs = {(a, b) for a in range(p) for b in range(p) if op != "/" or b}
    assert len(y) == len(pairs) and {(a, b) for a, _, b, _ in x.tolist()} == pairs  # every pair once
    answer = {"+": lambda a, b: (a + b) % p, "-": lambda a, b: (a - b) % p, "*": lambda a, b: a * b % p}
    answer["/"] = lambda a, b: a * pow(b, p - 2, p) % p
    for (a, o, b, eq), c in zip(x.tolist(), y.tolist()):
        assert (o, eq) == (p, p + 1) and c == answer[op](a, b)
        if op == "/":
            assert c * b % p == a  # the answer times b gives a back
    assert (ds.num_classes, ds.vocab, ds.objective) == (p + 2, p + 2, LAST_TOKEN)


def test_modular_split_is_seeded_and_of_the_asked_size():
    options = {"modulus": 11, "operation": "*", "train_fraction": 0.3}
    a, b = load_dataset("modular", options=options), load_dataset("modular", options=options)
    assert len(a.train) == round(0.3 * 121) and len(a.train) + len(a.test) == 121
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    train_rows = {tuple(r) for r in a.train.x.tolist()}
    assert train_rows.isdisjoint(tuple(r) for r in a.test.x.tolist())
    other = load_dataset("modular", options={**options, "train_fraction": 0.5})
    assert len(other.train) == round(0.5 * 121)
    with pytest.raises(TicketlabError, match="train_fraction"):
        load_dataset("modular", options={"modulus": 3, "train_fraction": 0.01})


def test_integer_inputs_stay_int64_through_loading_and_batches():
    d = DataConfig(dataset="modular", modulus=5, operation="-", train_fraction=0.8, val_size=4)
    ds = load_configured(d)
    raw_x, _ = tokens.modular_table(5, "-")
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.int64 and split.x.shape[1:] == (4,)
        assert {tuple(r) for r in split.x.tolist()} <= {tuple(r) for r in raw_x.tolist()}  # ids, not standardised
    _, x, y = next(batches(ds.train, 4, seed=0, start=0, stop=1))
    assert x.dtype == torch.int64 and y.dtype == torch.int64 and int(x.max()) <= 6


def test_text_char_windows_predict_the_next_character(tmp_path):
    text = "the quick brown fox jumps over the lazy dog; ça va? " * 9
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    ds = load_configured(DataConfig(dataset="text-char", corpus=str(path), context=8))
    chars, _ = tokens.char_codes(text)
    assert chars == "".join(sorted(set(text))) and ds.vocab == ds.num_classes == len(chars)
    assert ds.objective == LANGUAGE_MODEL and ds.train.x.dtype == torch.int64
    cut = int(len(text) * 0.9)
    assert ds.train.x.shape == ((cut - 1) // 8, 8) and ds.test.x.shape == ((len(text) - cut - 1) // 8, 8)
    decode = lambda t: "".join(chars[i] for i in t.flatten().tolist())  # noqa: E731
    assert decode(ds.train.x) == text[: len(ds.train.x) * 8]  # non-overlapping windows, in order
    assert decode(ds.train.y) == text[1 : len(ds.train.x) * 8 + 1]  # the next character at every position
    assert decode(ds.test.x) == text[cut : cut + len(ds.test.x) * 8]  # the last tenth is the test split
    with pytest.raises(TicketlabError, match="too few"):
        load_configured(DataConfig(dataset="text-char", corpus=str(path), context=1000))
    with pytest.raises(TicketlabError, match="neither fortunes, tiny-shakespeare nor a file"):
        load_configured(DataConfig(dataset="text-char", corpus=str(tmp_path / "missing.txt")))


@pytest.mark.skipif(not tokens.FORTUNES_DIR.is_dir(), reason="apt-get install fortunes")
def test_fortunes_is_the_offline_default_corpus():
    ds = load_dataset("text-char")
    assert ds.vocab == ds.num_classes and ds.input_shape == (64,) and len(ds.train) > 30_000
    assert torch.equal(ds.train.x[:, 1:], ds.train.y[:, :-1])


def test_a_missing_fortunes_package_says_how_to_get_a_corpus(monkeypatch, tmp_path):
    monkeypatch.setattr(tokens, "FORTUNES_DIR", tmp_path / "none")
    with pytest.raises(TicketlabError, match="apt-get install fortunes.*--corpus PATH.*tiny-shakespeare") as e:
        load_dataset("text-char")
    assert "\n" not in str(e.value)


def test_tiny_shakespeare_is_downloaded_checked_by_sha256_and_a_corrupted_file_refused(server, monkeypatch):  # noqa: F811
    body = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 30
    server.files["/tiny-shakespeare/input.txt"] = body
    good = hashlib.sha256(body).hexdigest()
    monkeypatch.setitem(sources.REMOTES, "tiny-shakespeare", sources.Remote((), {}, {"input.txt": good}))
    (sources.cache_dir() / "tiny-shakespeare" / "input.txt").unlink(missing_ok=True)
    ds = load_configured(DataConfig(dataset="text-char", corpus="tiny-shakespeare", context=16))
    assert ds.vocab == len(set(body.decode()))
    cached = sources.cache_dir() / "tiny-shakespeare" / "input.txt"
    assert cached.read_bytes() == body and server.requests == ["/tiny-shakespeare/input.txt"]
    # the server now sends other bytes than the checksum names: refused, nothing cached
    cached.unlink()
    server.files["/tiny-shakespeare/input.txt"] = body[:-1] + b"?"
    with pytest.raises(TicketlabError, match="input.txt.*checksum mismatch \\(SHA256"):
        load_configured(DataConfig(dataset="text-char", corpus="tiny-shakespeare"))
    assert not cached.exists() and not list(cached.parent.glob(".*"))


def test_mnist1d_seq_is_mnist1d_as_length_40_sequences():
    seq, flat = load_dataset("mnist1d-seq"), load_dataset("mnist1d")
    assert seq.input_shape == (40, 1) and seq.train.x.dtype == torch.float32 and seq.vocab is None
    assert torch.equal(seq.train.x[..., 0], flat.train.x) and torch.equal(seq.test.y, flat.test.y)


@pytest.mark.parametrize(
    "values, match",
    [
        ({"modulus": 91, "operation": "/"}, "modulus must be a prime >= 3 for --operation /"),
        ({"modulus": 1}, "modulus must be >= 2"),
        ({"train_fraction": 1.0}, "train_fraction must be in \\(0, 1\\)"),
        ({"train_fraction": 0.0}, "train_fraction must be in \\(0, 1\\)"),
        ({"context": 0}, "context must be >= 1"),
    ],
)
def test_bad_data_options_are_one_line_errors(values, match):
    with pytest.raises(TicketlabError, match=match) as e:
        DataConfig(**values)
    assert "\n" not in str(e.value)


def test_the_datasets_command_lists_the_token_datasets(capsys):
    assert main(["datasets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("modular", "text-char", "mnist1d-seq"))
