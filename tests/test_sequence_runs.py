"""IMP end to end on the token datasets and sequence models: a tiny level on each, perplexity in the results of a
language model (and nowhere else), and the issue-16 presets."""

import json
import math

import pytest
from conftest import tiny_config

from ticketlab import masks as M
from ticketlab.batched import unbatchable
from ticketlab.config import from_dict
from ticketlab.data import load_configured
from ticketlab.imp import imp
from ticketlab.models import create_model
from ticketlab.presets import PRESETS, preset
from ticketlab.problem import registry_problem
from ticketlab.prunable import layer_kinds
from ticketlab.report.tables import imp_tables
from ticketlab.rundir import load_ticket
from ticketlab.store import load_tensors, read_csv, read_record
from ticketlab.training.objectives import CLASSIFICATION

TINY_TRAIN = {"optimizer": "adamw", "lr": 1e-2, "batch_size": 16, "steps": "20it", "eval_every": "10it"}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog; " * 40, encoding="utf-8")
    return str(path)


def _cases(corpus: str) -> dict[str, dict]:
    text = {"dataset": "text-char", "corpus": corpus, "context": 16}
    return {
        "transformer_lm on modular": dict(
            data={"dataset": "modular", "modulus": 7, "train_fraction": 0.6},
            model={"model": "transformer_lm", "init": "default", "args": ("d_model=16", "heads=2", "layers=1")},
        ),
        "transformer_lm on text-char": dict(
            data=text,
            model={"model": "transformer_lm", "init": "default", "args": ("d_model=16", "heads=2", "layers=1")},
        ),
        "rnn_lm (gru) on text-char": dict(
            data=text, model={"model": "rnn_lm", "init": "default", "args": ("cell=gru", "hidden=16", "embed=8")}
        ),
        "rnn_classifier on mnist1d-seq": dict(
            data={"dataset": "mnist1d-seq"},
            model={"model": "rnn_classifier", "init": "default", "args": ("hidden=8",)},
        ),
    }


def _config(sections: dict, *, prune_embeddings: bool, baselines: tuple[str, ...]):
    return from_dict(
        {
            **sections,
            "train": TINY_TRAIN,
            "prune": {"strategy": "global", "fraction": 0.5, "prune_embeddings": prune_embeddings},
            "imp": {"levels": 1, "replicates": 1, "baselines": baselines},
        }
    )


@pytest.mark.parametrize(
    "case",
    ["transformer_lm on modular", "transformer_lm on text-char", "rnn_lm (gru) on text-char",
     "rnn_classifier on mnist1d-seq"],
)  # fmt: skip
def test_one_imp_level_on_each_sequence_model(case, corpus, tmp_path):
    sections = _cases(corpus)[case]
    cfg = _config(sections, prune_embeddings=True, baselines=("random_prune",))
    run = imp(cfg, out=tmp_path / "runs")
    rows = run.results(cfg, quiet=True)
    assert [(r["level"], r["branch"]) for r in rows] == [(0, "ticket"), (1, "ticket"), (1, "random_prune")]
    ticket = load_ticket(run.path, 1)
    assert M.density(ticket.mask) == pytest.approx(0.5, abs=1e-3)  # global: half of every pruned weight
    problem = registry_problem(cfg, load_configured(cfg.data))
    model = problem.init_model(0)
    model.load_state_dict(load_tensors(run.job(0, 1, "ticket").final))  # the trained ticket
    params = dict(model.named_parameters())
    kinds = layer_kinds(model)
    assert any(kinds.get(name) == "embedding" for name in ticket.mask) != case.endswith("mnist1d-seq")
    for name, keep in ticket.mask.items():
        assert (params[name].detach()[~keep] == 0).all(), name  # pruned weights are exactly zero after training


def test_language_model_results_carry_perplexity_and_classification_results_do_not(corpus, tmp_path):
    sections = _cases(corpus)["rnn_lm (gru) on text-char"]
    cfg = _config(sections, prune_embeddings=False, baselines=())
    run = imp(cfg, out=tmp_path / "lm")
    rows = read_csv(run.results_file)
    last = json.loads(run.job(0, 1, "ticket").metrics.read_text().splitlines()[-1])
    assert float(rows[1]["final_test_ppl"]) == pytest.approx(math.exp(last["test_loss"]), rel=1e-9)
    assert read_record(run.job(0, 1, "ticket").result)["final_test_ppl"] == pytest.approx(math.exp(last["test_loss"]))
    text = imp_tables(run.results(cfg, quiet=True))
    assert "test perplexity (lower is better)" in text
    plain = imp(tiny_config(), out=tmp_path / "plain")
    header = read_csv(plain.results_file)[0]
    assert "final_test_ppl" not in header and "test perplexity" not in imp_tables(plain.results(tiny_config()))


@pytest.mark.parametrize("name", ["grokking-modadd", "lm-char-transformer", "lm-char-lstm"])
def test_sequence_presets_build_their_model(name):
    cfg = from_dict(preset(name))
    assert name in PRESETS
    length = 4 if cfg.data.dataset == "modular" else cfg.data.context
    vocab = cfg.data.modulus + 2 if cfg.data.dataset == "modular" else 100
    model = create_model(cfg.model.model, (length,), vocab, **cfg.model.kwargs())
    assert sum(p.numel() for p in model.parameters()) > 10_000


def test_a_transformer_trains_one_job_at_a_time_where_vmap_would_loop_over_attention():
    """vmap has no batching rule for CPU flash attention and falls back to a loop per job (with a warning): such a
    model is reported unbatchable rather than trained slower than one by one."""
    data = load_configured(from_dict({"data": {"dataset": "modular", "modulus": 5}}).data)
    model = create_model("transformer_lm", (4,), 7, d_model=16, heads=2, layers=1)
    why = unbatchable(model, from_dict({}).train, data, data.objective)
    assert why is not None and "no batching rule" in why
    mlp = create_model("mlp", (20,), 10, widths=(8,))
    plain = load_configured(from_dict({"data": {"dataset": "synthetic"}}).data)
    assert unbatchable(mlp, from_dict({}).train, plain, CLASSIFICATION) is None
