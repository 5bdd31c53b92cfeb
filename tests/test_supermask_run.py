"""`ticketlab supermask`: the strong-ticket experiment's run directory, rows, baselines and resumption."""

from __future__ import annotations

import pytest
import torch

import ticketlab
from ticketlab import cli
from ticketlab import masks as M
from ticketlab import supermask_run as SR
from ticketlab.config import from_dict
from ticketlab.errors import TicketlabError
from ticketlab.store import load_tensors, read_csv, read_record

FLAGS = [
    "supermask",
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--widths",
    "24,12",
    "--steps",
    "30it",
    "--eval-every",
    "15it",
    "--batch-size",
    "50",
    "--lr",
    "0.1",
    "--optimizer",
    "sgd",
    "--momentum",
    "0.9",
    "--replicates",
    "2",
    "--method",
    "edge-popup,zhou,biprop",
    "--k",
    "0.3,0.6",
    "--no-progress",
]


def _run(out, *extra) -> SR.RunDir:
    assert cli.main([*FLAGS, "--out", str(out), *extra]) == 0
    (path,) = [p for p in out.iterdir() if p.name.startswith("supermask-")]
    return SR.RunDir(path)


def _state(run) -> dict[str, bytes]:
    """Every file's bytes, but wall times (result records hold them) and the report."""
    out = {}
    for p in sorted(run.path.rglob("*")):
        if p.is_file() and p.name not in ("result.json", "report.html", "results.csv", "summary.csv"):
            out[run.rel(p)] = p.read_bytes()
    return out


def test_rows_hold_every_method_its_random_mask_and_the_dense_network(tmp_path):
    run = _run(tmp_path)
    rows = read_csv(run.results_file)
    methods = {(r["method"], r["baseline_of"], r["k"]) for r in rows if r["replicate"] == "0"}
    learned = {(m, "", k) for m in ("edge-popup", "zhou", "biprop") for k in ("0.3", "0.6")}
    random = {("random", m, k) for m in ("edge-popup", "zhou", "biprop") for k in ("0.3", "0.6")}
    assert methods == learned | random | {("dense", "", "1.0")}
    assert len(rows) == 2 * (1 + 12)
    for r in (0, 1):
        for method in ("edge-popup", "biprop", "zhou"):
            for k in (0.3, 0.6):
                job = run.job(r, 0, f"{method}-k{k:g}-w1")
                mask = M.load_mask(job.mask)
                record = read_record(job.result)
                if method != "zhou":  # exactly round(k * size) per layer
                    assert all(int(m.sum()) == max(1, round(k * m.numel())) for m in mask.values())
                assert record["density"] == pytest.approx(M.density(mask))
                assert record["random"]["density"] == pytest.approx(record["density"])
                # the weights in the final state are the starting weights, bit for bit
                init, final = load_tensors(job.init), load_tensors(job.final)
                assert all(torch.equal(final["net." + n], t) for n, t in init.items())
                assert any(n.startswith("scores.") for n in final)
    dense = [r for r in rows if r["method"] == "dense"]
    assert all(float(r["density"]) == 1.0 for r in dense)
    zhou = [r for r in rows if r["method"] == "zhou"]
    assert all(r["test_acc_expected"] != "" for r in zhou)
    assert all(r["test_acc_expected"] == "" for r in rows if r["method"] not in ("zhou", "random"))
    assert (run.path / "summary.csv").exists() and (run.path / "accuracy_vs_k.png").exists()


def test_a_rerun_trains_nothing_and_a_killed_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    whole = _run(tmp_path / "whole")
    before = _state(whole)
    with monkeypatch.context() as m:
        m.setattr(SR, "train", lambda *a, **k: pytest.fail("a finished supermask job trained again"))
        m.setattr(SR, "run_jobs", lambda run, jobs, **k: [run.finished(j.files) or pytest.fail("dense") for j in jobs])
        assert _run(tmp_path / "whole").path == whole.path
    assert _state(whole) == before

    calls = []
    real = SR.train

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # killed while training the third supermask
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(SR, "train", killed)
        assert cli.main([*FLAGS, "--out", str(tmp_path / "killed")]) == 130
    resumed = _run(tmp_path / "killed")
    assert _state(resumed) == before
    rows = lambda run: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in read_csv(run.results_file)]  # noqa: E731
    assert rows(resumed) == rows(whole)


def test_widening_scales_an_mlps_widths_and_a_conv_nets_width():
    mlp = from_dict({"model": {"model": "mlp", "widths": (10, 4)}})
    assert SR.widened(mlp, 2.0).model.widths == (20, 8)
    default = from_dict({"model": {"model": "lenet_300_100"}})
    assert SR.widened(default, 0.5).model.widths == (150, 50)
    conv = from_dict({"model": {"model": "conv_2", "width": 0.5}})
    assert SR.widened(conv, 4.0).model.width == 2.0
    with pytest.raises(TicketlabError, match="no width to scale"):
        SR.widened(from_dict({"model": {"model": "mnist1d_cnn"}}), 2.0)


def test_a_width_sweep_has_rows_per_width_and_a_width_plot(tmp_path):
    run = _run(tmp_path, "--width-sweep", "0.5,1", "--replicates", "1", "--method", "edge-popup", "--k", "0.5")
    rows = read_csv(run.results_file)
    assert sorted({r["width"] for r in rows}) == ["0.5", "1.0"]
    narrow = load_tensors(run.job(0, 0, "edge-popup-k0.5-w0.5").init)
    wide = load_tensors(run.job(0, 0, "edge-popup-k0.5-w1").init)
    assert narrow["fc.0.weight"].shape[0] * 2 == wide["fc.0.weight"].shape[0]
    assert (run.path / "accuracy_vs_width.png").exists()


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--method", "popup", "--method popup"),
        ("--k", "0", "--k"),
        ("--k", "1.5", "--k"),
        ("--k", "a,b", "--k 'a,b'"),
        ("--width-sweep", "0", "--width-sweep"),
        ("--rescale", None, "--rescale"),
        ("--binary-activations", None, "--binary-activations"),
        ("--dense-lr", "-1", "--dense-lr"),
    ],  # fmt: skip
)
def test_bad_options_are_one_line_errors_and_write_nothing(tmp_path, capsys, flag, value, says):
    args = [*FLAGS, "--method", "edge-popup", "--out", str(tmp_path), flag] + ([value] if value else [])
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ticketlab: error: " + says) and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_find_supermask_learns_a_mask_over_a_users_conv_net_and_leaves_its_weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, 6, 6, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 36, 4),
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    found = ticketlab.find_supermask(
        net, (x[:300], y[:300]), (x[300:], y[300:]), k=0.4, steps="3ep", lr=0.1, optimizer="sgd", batch_size=50
    )
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
    assert set(found.mask) == {"0.weight", "4.weight"}
    assert all(int(m.sum()) == round(0.4 * m.numel()) for m in found.mask.values())
    assert found.density == pytest.approx(0.4, abs=1e-3)
    with pytest.raises(TicketlabError, match="unknown option"):
        ticketlab.find_supermask(net, (x, y), (x, y), methd="zhou")
    with pytest.raises(TicketlabError, match="--k"):
        ticketlab.find_supermask(net, (x, y), (x, y), k=0.0)
