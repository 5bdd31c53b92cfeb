"""Dataset files: CIFAR-10 pickles and the download path, served by a real HTTP server on 127.0.0.1."""

import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading

import numpy as np
import pytest
import torch

from ticketlab import sources
from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes())


def mnist_files(n_train=40, n_test=10, seed=0) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    return {sources.IDX_FILES[k] + ".gz": idx_bytes(a) for k, a in arrays.items()}, arrays


def cifar_batch(n: int, rng) -> tuple[bytes, np.ndarray, list[int]]:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    d = {b"batch_label": b"generated", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
    return pickle.dumps(d, protocol=2), data, labels


def cifar_archive(n=6, seed=0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A cifar-10-python.tar.gz in the real layout; returns it with the train images and test labels."""
    rng = np.random.default_rng(seed)
    buf, train = io.BytesIO(), []
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in (*sources.CIFAR_TRAIN, sources.CIFAR_TEST):
            raw, data, labels = cifar_batch(n, rng)
            info = tarfile.TarInfo(f"{sources.CIFAR_DIR}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            if name != sources.CIFAR_TEST:
                train.append(data)
    return buf.getvalue(), np.concatenate(train).reshape(-1, 3, 32, 32), np.array(labels)


class Server:
    """Serves ``files`` (name -> bytes) under /<dataset>/<name>; ``truncate`` names are cut short mid-body."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in outer.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, dataset: str, files: dict[str, bytes], monkeypatch) -> None:
        """Serve ``files`` and make them the dataset's published files (their MD5s the expected ones)."""
        for name, body in files.items():
            self.files[f"/{dataset}/{name}"] = body
        md5 = {name: hashlib.md5(body).hexdigest() for name, body in files.items()}
        # the test server is the only mirror: the real ones are unreachable here and must not be tried
        monkeypatch.setitem(sources.REMOTES, dataset, sources.Remote((), md5))


@pytest.fixture
def server(monkeypatch, tmp_path):
    s = Server()
    monkeypatch.setenv(sources.MIRROR_ENV, s.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("TICKETLAB_DATA_DIR", raising=False)
    yield s
    s.httpd.shutdown()


def test_mnist_downloads_checks_and_caches(server, monkeypatch, tmp_path):
    files, arrays = mnist_files()
    server.publish("mnist", files, monkeypatch)
    ds = load_dataset("mnist")
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(arrays["train_x"]))
    assert torch.equal(ds.test.y, torch.from_numpy(arrays["test_y"].astype(np.int64)))
    cached = sources.fetch("mnist", "train-images-idx3-ubyte.gz")
    assert cached.read_bytes() == files["train-images-idx3-ubyte.gz"]
    assert not list(cached.parent.glob(".*")), "no temporary files are left behind"
    # the second load uses the cache: no new requests
    before = len(server.requests)
    load_dataset("mnist")
    assert len(server.requests) == before


def test_a_checksum_mismatch_is_reported_and_nothing_is_cached(server, monkeypatch):
    files, _ = mnist_files()
    server.publish("fashion-mnist", files, monkeypatch)
    # the server sends other bytes than were published
    server.files["/fashion-mnist/t10k-labels-idx1-ubyte.gz"] = idx_bytes(np.zeros(10, np.uint8))
    monkeypatch.setattr(sources, "idx_paths", lambda d: None)  # no Debian directory: download
    with pytest.raises(TicketlabError, match="t10k-labels-idx1-ubyte.gz.*checksum mismatch"):
        load_dataset("fashion-mnist")
    directory = sources.cache_dir() / "fashion-mnist"
    assert not (directory / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list(directory.glob(".*")), "the rejected download is deleted"


def test_a_download_cut_short_is_reported_and_nothing_is_cached(server, monkeypatch):
    archive, _, _ = cifar_archive()
    server.publish("cifar10", {sources.CIFAR_ARCHIVE: archive}, monkeypatch)
    server.truncate.add(f"/cifar10/{sources.CIFAR_ARCHIVE}")
    with pytest.raises(TicketlabError, match="could not download cifar-10-python.tar.gz"):
        load_dataset("cifar10")
    assert not (sources.cache_dir() / "cifar10" / sources.CIFAR_ARCHIVE).exists()


def test_an_unreachable_mirror_says_how_to_do_without(monkeypatch):
    monkeypatch.setenv(sources.MIRROR_ENV, "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setitem(sources.REMOTES, "mnist", sources.Remote((), {"train-images-idx3-ubyte.gz": "0" * 32}))
    with pytest.raises(TicketlabError, match="put the file in .* yourself, or pass --data-dir"):
        sources.fetch("mnist", "train-images-idx3-ubyte.gz")


def test_cifar10_downloads_and_a_corrupted_cache_is_fetched_again(server, monkeypatch):
    archive, train_x, test_y = cifar_archive()
    server.publish("cifar10", {sources.CIFAR_ARCHIVE: archive}, monkeypatch)
    ds = load_dataset("cifar10", val_size=6)
    assert ds.input_shape == (3, 32, 32) and ds.train.x.dtype == torch.uint8
    assert len(ds.train) + len(ds.val) == 30 and torch.equal(ds.test.y, torch.from_numpy(test_y))
    cached = sources.cache_dir() / "cifar10" / sources.CIFAR_ARCHIVE
    cached.write_bytes(cached.read_bytes()[:100])  # damaged after the fact
    n = len(server.requests)
    whole = load_dataset("cifar10")
    assert len(server.requests) == n + 1 and cached.read_bytes() == archive
    assert torch.equal(whole.train.x, torch.from_numpy(train_x))


def test_cifar10_from_a_local_directory_or_archive(tmp_path):
    archive, train_x, test_y = cifar_archive(n=4)
    (tmp_path / sources.CIFAR_ARCHIVE).write_bytes(archive)
    a = load_dataset("cifar10", data_dir=tmp_path)
    with tarfile.open(tmp_path / sources.CIFAR_ARCHIVE) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    b = load_dataset("cifar10", data_dir=tmp_path / "extracted")
    c = load_dataset("cifar10", data_dir=tmp_path / "extracted" / sources.CIFAR_DIR)
    for ds in (a, b, c):
        assert torch.equal(ds.train.x, torch.from_numpy(train_x)) and torch.equal(ds.test.y, torch.from_numpy(test_y))
    # a truncated batch is reported, not used
    batch = tmp_path / "extracted" / sources.CIFAR_DIR / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(TicketlabError, match="data_batch_3 is not a valid CIFAR-10 batch"):
        load_dataset("cifar10", data_dir=tmp_path / "extracted")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TicketlabError, match="holds neither"):
        load_dataset("cifar10", data_dir=tmp_path / "empty")


def test_a_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    directory = tmp_path / sources.CIFAR_DIR
    directory.mkdir()
    rng = np.random.default_rng(0)
    for name in (*sources.CIFAR_TRAIN, sources.CIFAR_TEST):
        (directory / name).write_bytes(cifar_batch(2, rng)[0])
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}, protocol=2))
    with pytest.raises(TicketlabError, match="unexpected object .*print"):
        load_dataset("cifar10", data_dir=tmp_path)
