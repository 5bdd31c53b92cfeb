"""Token datasets for sequence models: modular arithmetic (grokking), character-level text, MNIST-1D as a sequence.

Inputs are int64 token ids (N, T) that stay integers all the way to the model (``prepare`` leaves them as they
are); batches are index gathers like every other dataset's. Registered into :mod:`ticketlab.data`'s registry
(``ticketlab datasets`` lists them), which imports this module at its end.

- ``modular``: every pair (a, b) of (a op b) mod p as the four tokens [a, op, b, =] with the answer as the label,
  a fixed seeded share of the pairs for training (Power et al. 2022, "Grokking"; Nanda et al. 2023).
- ``text-char``: next-character prediction on non-overlapping windows of a text (Karpathy's char-rnn setting).
- ``mnist1d-seq``: MNIST-1D's 40 features read as a length-40 sequence of one feature each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ticketlab import sources
from ticketlab.data import Split, mnist1d_splits, register_dataset
from ticketlab.errors import TicketlabError
from ticketlab.training.objectives import LANGUAGE_MODEL, LAST_TOKEN

OPERATIONS = ("+", "-", "*", "/")
SPLIT_SEED = 0  # the modular train/test split is a function of (p, op, fraction) only
FORTUNES_DIR = Path("/usr/share/games/fortunes")
TEST_SHARE = 0.1  # text-char: the last tenth of the text is the test split


def modular_table(modulus: int, operation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every equation of ``(a op b) mod p``: tokens x (N, 4) int64 rows [a, op, b, =] (ids a, b in 0..p-1,
    op = p, = is p+1) and answers y (N,) int64, in the order of (a, b). N = p*p, or p*(p-1) for "/" (b != 0,
    a / b = a * b^(p-2) mod p, Fermat's little theorem: p must be prime). Raises TicketlabError for an unknown
    operation."""
    p = modulus
    if operation not in OPERATIONS:
        raise TicketlabError(f"operation must be one of {' '.join(OPERATIONS)}, got {operation!r}")
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    if operation == "/":
        a, b = a[b != 0], b[b != 0]
        inverse = torch.tensor([pow(v, p - 2, p) for v in range(p)])  # one per residue, not per pair
        y = a * inverse[b] % p
    else:
        y = {"+": a + b, "-": a - b, "*": a * b}[operation] % p  # torch's % takes the sign of p: a - b in 0..p-1
    x = torch.stack([a, torch.full_like(a, p), b, torch.full_like(a, p + 1)], 1)
    return x, y


@register_dataset(
    "modular",
    "(a op b) mod p as tokens [a, op, b, =] (grokking): --modulus, --operation, --train-fraction; last-token",
    options=("modulus", "operation", "train_fraction"),
)
def modular(_: Path | None, modulus: int = 97, operation: str = "+", train_fraction: float = 0.3):
    """All equations of :func:`modular_table`, ``round(train_fraction * N)`` of them (a seeded draw, the same for
    the same p, op and fraction) for training and the rest for testing; vocabulary p + 2; classification of the
    answer at the last position (:data:`~ticketlab.training.objectives.LAST_TOKEN`)."""
    x, y = modular_table(modulus, operation)
    n_train = round(train_fraction * len(y))
    if not 0 < n_train < len(y):
        raise TicketlabError(
            f"train_fraction {train_fraction} leaves {n_train} of {len(y)} equations for training; choose one that "
            "leaves some for training and some for testing"
        )
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr, te = perm[:n_train].sort().values, perm[n_train:].sort().values
    vocab = modulus + 2
    return Split(x[tr], y[tr]), Split(x[te], y[te]), vocab, {"objective": LAST_TOKEN, "vocab": vocab}


def corpus_text(corpus: str) -> str:
    """The text of ``corpus``: "fortunes" (the default, offline: the text files of Debian's ``fortunes`` package
    in /usr/share/games/fortunes, BSD-licensed and freely redistributable, about 2.5 MB of English prose and verse,
    in sorted file order; ``apt-get install fortunes``), "tiny-shakespeare" (Karpathy's 1.1 MB char-rnn corpus,
    downloaded into the cache and checked by SHA-256), or the path of a UTF-8 text file. Raises TicketlabError
    when it cannot be read."""
    if corpus == "fortunes":
        files = sorted(
            f
            for f in (FORTUNES_DIR.iterdir() if FORTUNES_DIR.is_dir() else ())
            if f.is_file() and not f.is_symlink() and f.suffix not in (".dat", ".u8")
        )
        if not files:
            raise TicketlabError(
                f"corpus fortunes: no fortune files in {FORTUNES_DIR}; apt-get install fortunes, or pass "
                "--corpus PATH (a UTF-8 text file) or --corpus tiny-shakespeare"
            )
    elif corpus == "tiny-shakespeare":
        files = [sources.fetch("tiny-shakespeare", "input.txt")]
    else:
        files = [Path(corpus)]
        if not files[0].is_file():
            raise TicketlabError(
                f"corpus {corpus!r} is neither fortunes, tiny-shakespeare nor a file; pass one of those or a path"
            )
    try:
        return "".join(f.read_text(encoding="utf-8") for f in files)
    except UnicodeDecodeError as e:
        raise TicketlabError(f"corpus {corpus}: not UTF-8 text ({e}); convert it to UTF-8") from None


def char_codes(text: str) -> tuple[str, np.ndarray]:
    """The vocabulary of ``text`` (its distinct characters, sorted, as one string) and the text as ids into it
    (len(text),) int64."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per character, no loop
    chars, ids = np.unique(points, return_inverse=True)
    return "".join(map(chr, chars.tolist())), ids.astype(np.int64).reshape(-1)


def windows(ids: torch.Tensor, context: int) -> Split:
    """Non-overlapping windows of ``context`` ids: x (N, T) and y = the next id at each position (x shifted by
    one), N = (len(ids) - 1) // T."""
    n = (len(ids) - 1) // context
    return Split(ids[: n * context].view(n, context), ids[1 : n * context + 1].view(n, context))


@register_dataset(
    "text-char",
    "next-character prediction (--corpus fortunes, tiny-shakespeare or a text file; --context); language model",
    options=("context", "corpus"),
)
def text_char(_: Path | None, context: int = 64, corpus: str = "fortunes"):
    """:func:`corpus_text` as character ids; the first 90% of the text gives the training windows, the last 10% the
    test windows (:func:`windows`); vocabulary = the text's distinct characters; per-token cross-entropy
    (:data:`~ticketlab.training.objectives.LANGUAGE_MODEL`)."""
    chars, codes = char_codes(corpus_text(corpus))
    ids = torch.from_numpy(codes)
    cut = int(len(ids) * (1 - TEST_SHARE))
    train, test = windows(ids[:cut], context), windows(ids[cut:], context)
    if not len(test):
        raise TicketlabError(
            f"corpus {corpus}: {len(ids)} characters are too few for windows of --context {context}; "
            "use a longer text or a shorter context"
        )
    return train, test, len(chars), {"objective": LANGUAGE_MODEL, "vocab": len(chars)}


@register_dataset("mnist1d-seq", "MNIST-1D as sequences (N, 40, 1) float32 for sequence models: 4000 / 1000")
def mnist1d_seq(_: Path | None) -> tuple[Split, Split, int]:
    """MNIST-1D with each example a length-40 sequence of one feature (standardised like ``mnist1d``)."""
    train, test, num_classes = mnist1d_splits()
    return Split(train.x[:, :, None], train.y), Split(test.x[:, :, None], test.y), num_classes
