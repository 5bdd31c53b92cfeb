"""Sequence models for token and time-series data: a small decoder-only Transformer and an LSTM/GRU, each as a
language model (a (B, T, C) logit per position) and as a classifier (one (B, C) logit read at the last position).

The Transformer follows nanoGPT's pre-norm block (norm -> causal self-attention -> residual; norm -> MLP ->
residual; a final norm and a linear head), built on ``nn.MultiheadAttention`` so :mod:`ticketlab.prunable` prunes its
``in_proj_weight`` as kind "attention" and its ``out_proj`` as a linear layer, as it would in a user's model.
Integer inputs (B, T) are token ids, looked up in an embedding and never cast to float; float inputs (B, T, F), or
(B, T) read as F = 1, go through a linear projection (the classifiers only).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.models import register

POSITIONS = ("learned", "sinusoidal")
SEQ_NORMS = ("layer", "rms", "none")
CELLS = ("lstm", "gru")


def _choice(model: str, name: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        raise TicketlabError(f"{model}: {name}={value!r} is not known; use one of {', '.join(known)}")


def _positive(model: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise TicketlabError(f"{model}: {name} must be a positive whole number, got {value!r}")


def _seq_norm(kind: str, d: int) -> nn.Module:
    return {"layer": nn.LayerNorm, "rms": nn.RMSNorm}[kind](d) if kind != "none" else nn.Identity()


def _length(model: str, input_shape: tuple[int, ...], tokens_only: bool) -> tuple[int, int]:
    """(T, F) from an example's shape: (T,) tokens or a one-feature series, (T, F) a series of F features."""
    if len(input_shape) == 1 or (len(input_shape) == 2 and not tokens_only):
        return input_shape[0], (input_shape[1] if len(input_shape) == 2 else 1)
    want = "token sequences (T,)" if tokens_only else "sequences (T,) of tokens or (T, F) of features"
    raise TicketlabError(f"model {model!r} needs {want}; this data has examples of shape {tuple(input_shape)}")


def _sinusoids(length: int, d: int) -> torch.Tensor:
    """Vaswani et al.'s fixed positions: sin on even, cos on odd features, wavelengths 2 pi .. 10000 * 2 pi."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(length, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table


class _Inputs(nn.Module):
    """Token ids (B, T) int -> embedding; float (B, T, F) or (B, T) -> linear projection; both to (B, T, d)."""

    def __init__(self, model: str, vocab: int | None, features: int | None, d: int) -> None:
        super().__init__()
        self.model = model
        self.embed = nn.Embedding(vocab, d) if vocab is not None else None
        self.project = nn.Linear(features, d) if features is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            if self.embed is None:
                raise TicketlabError(f"model {self.model!r} got integer tokens but has no vocab; pass vocab=V")
            return self.embed(x)
        if self.project is None:
            raise TicketlabError(
                f"model {self.model!r} takes integer token ids, got a {x.dtype} tensor; for float sequences use "
                "transformer_classifier or rnn_classifier (e.g. on mnist1d-seq)"
            )
        return self.project(x if x.dim() == 3 else x.unsqueeze(-1))


class _Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)) with a causal mask, then x + mlp(norm(x))."""

    def __init__(self, d: int, heads: int, d_ff: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.norm1 = _seq_norm(norm, d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm2 = _seq_norm(norm, d)
        self.mlp = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class SequenceTransformer(nn.Module):
    """Decoder-only Transformer: (B, T) tokens or (B, T, F) features -> (B, T, C), or (B, C) with ``last``."""

    def __init__(
        self, inputs: _Inputs, length: int, num_classes: int, d: int, heads: int, layers: int, d_ff: int,
        positions: str, norm: str, dropout: float, last: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.inputs = inputs
        if positions == "learned":
            self.pos = nn.Embedding(length, d)
        else:  # a buffer, not a parameter: nothing to train or prune, and the same for every seed
            self.register_buffer("sinusoids", _sinusoids(length, d), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(d, heads, d_ff, norm, dropout) for _ in range(layers))
        self.norm = _seq_norm(norm, d)
        self.head = nn.Linear(d, num_classes)
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.inputs(x)  # (B, T, d)
        h = h + (self.pos.weight[:t] if hasattr(self, "pos") else self.sinusoids[:t])
        h = self.drop(h)
        # -inf above the diagonal: the future is not attended to. An additive float mask, not a boolean one: in eval
        # mode nn.MultiheadAttention's fast path takes a boolean mask 1.8x slower (260 vs 145 ms for 1024 x 64
        # tokens, d 64, one CPU thread), with the same outputs.
        causal = torch.full((t, t), float("-inf"), device=h.device).triu(1)
        for block in self.blocks:
            h = block(h, causal)
        out = self.head(self.norm(h))  # (B, T, C)
        return out[:, -1] if self.last else out


class SequenceRNN(nn.Module):
    """LSTM/GRU over (B, T) tokens or (B, T, F) features -> (B, T, C), or (B, C) read at the last step."""

    def __init__(
        self, inputs: _Inputs, num_classes: int, cell: str, embed: int, hidden: int, layers: int, last: bool
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.inputs(x))  # (B, T, hidden)
        return self.head(h[:, -1] if self.last else h)


def _transformer(
    model: str, input_shape: tuple[int, ...], num_classes: int, vocab: int | None, d_model: int, heads: int,
    layers: int, d_ff: int, positions: str, tie: bool, norm: str, dropout: float, last: bool,
) -> nn.Module:  # fmt: skip
    _positive(model, d_model=d_model, heads=heads, layers=layers)
    _choice(model, "positions", positions, POSITIONS)
    _choice(model, "norm", norm, SEQ_NORMS)
    if d_model % heads:
        raise TicketlabError(f"{model}: d_model={d_model} must be a multiple of heads={heads}")
    if not 0 <= dropout < 1:
        raise TicketlabError(f"{model}: dropout must be in [0, 1), got {dropout!r}")
    length, features = _length(model, input_shape, tokens_only=not last)
    inputs = _Inputs(model, vocab, None if vocab is not None else features, d_model)
    d_ff = d_ff or 4 * d_model
    _positive(model, d_ff=d_ff)
    net = SequenceTransformer(inputs, length, num_classes, d_model, heads, layers, d_ff, positions, norm, dropout, last)
    if tie:
        _tie(model, net.inputs, net.head, vocab, num_classes)
    return net


def _tie(model: str, inputs: _Inputs, head: nn.Linear, vocab: int | None, num_classes: int) -> None:
    """Share the token embedding (V, d) with the output head (C, d): one tensor, which needs V == C."""
    if inputs.embed is None or vocab != num_classes:
        raise TicketlabError(
            f"{model}: tie=True shares the token embedding with the output layer, which needs vocab == num_classes; "
            f"got vocab={vocab} and num_classes={num_classes}"
        )
    if inputs.embed.weight.shape != head.weight.shape:
        raise TicketlabError(
            f"{model}: tie=True needs the embedding and the head the same shape; got {tuple(inputs.embed.weight.shape)}"
            f" and {tuple(head.weight.shape)} (make embed equal to hidden)"
        )
    head.weight = inputs.embed.weight


def _token_vocab(model: str, vocab: int | None) -> None:
    if vocab is not None:
        _positive(model, vocab=vocab)


@register
def transformer_lm(
    input_shape: tuple[int, ...], num_classes: int, vocab: int | None = None, d_model: int = 128, heads: int = 4,
    layers: int = 2, d_ff: int = 0, positions: str = "learned", tie: bool = False, norm: str = "layer",
    dropout: float = 0.0,
) -> nn.Module:  # fmt: skip
    """Decoder-only Transformer language model: (B, T) tokens -> causal (B, T, C) logits."""
    vocab = num_classes if vocab is None else vocab
    _token_vocab("transformer_lm", vocab)
    return _transformer(
        "transformer_lm", input_shape, num_classes, vocab, d_model, heads, layers, d_ff, positions, tie, norm,
        dropout, last=False,
    )  # fmt: skip


@register
def transformer_classifier(
    input_shape: tuple[int, ...], num_classes: int, vocab: int | None = None, d_model: int = 128, heads: int = 4,
    layers: int = 2, d_ff: int = 0, positions: str = "learned", tie: bool = False, norm: str = "layer",
    dropout: float = 0.0,
) -> nn.Module:  # fmt: skip
    """Decoder-only Transformer classifier read at the last position: tokens (vocab given) or (B, T, F) -> (B, C)."""
    _token_vocab("transformer_classifier", vocab)
    return _transformer(
        "transformer_classifier", input_shape, num_classes, vocab, d_model, heads, layers, d_ff, positions, tie,
        norm, dropout, last=True,
    )  # fmt: skip


def _rnn(
    model: str, input_shape: tuple[int, ...], num_classes: int, vocab: int | None, cell: str, hidden: int,
    layers: int, embed: int, tie: bool, last: bool,
) -> nn.Module:  # fmt: skip
    _positive(model, hidden=hidden, layers=layers, embed=embed)
    _token_vocab(model, vocab)
    _choice(model, "cell", cell, CELLS)
    _, features = _length(model, input_shape, tokens_only=not last)
    inputs = _Inputs(model, vocab, None if vocab is not None else features, embed)
    net = SequenceRNN(inputs, num_classes, cell, embed, hidden, layers, last)
    if tie:
        _tie(model, net.inputs, net.head, vocab, num_classes)
    return net


@register
def rnn_classifier(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab: int | None = None,
    cell: str = "lstm",
    hidden: int = 128,
    layers: int = 1,
    embed: int = 64,
) -> nn.Module:
    """LSTM/GRU classifier read at the last step: tokens (vocab given) or (B, T, F) -> (B, C)."""
    return _rnn("rnn_classifier", input_shape, num_classes, vocab, cell, hidden, layers, embed, False, last=True)


@register
def rnn_lm(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab: int | None = None,
    cell: str = "lstm",
    hidden: int = 128,
    layers: int = 1,
    embed: int = 64,
    tie: bool = False,
) -> nn.Module:
    """LSTM/GRU language model: (B, T) tokens -> (B, T, C) logits, each from the tokens up to its position."""
    vocab = num_classes if vocab is None else vocab
    return _rnn("rnn_lm", input_shape, num_classes, vocab, cell, hidden, layers, embed, tie, last=False)
