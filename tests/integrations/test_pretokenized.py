"""Pre-tokenized data through the real server, PyTorch DataLoaders (forked and spawned
workers, StatefulDataLoader resume) and the Hugging Face adapter: unchanged. Issue 15."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

torch = pytest.importorskip("torch")
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402

from mixplane.chunking import Topology  # noqa: E402
from mixplane.client import Client  # noqa: E402
from mixplane.client.remote import RemoteError  # noqa: E402
from mixplane.client.windows import WindowStream  # noqa: E402
from mixplane.integrations.hf import hf_dataset  # noqa: E402
from mixplane.integrations.pytorch import TokenWindowDataset, collate_windows  # noqa: E402
from mixplane.tokens import load_tokenizer, train_bpe  # noqa: E402
from tests.integrations.server import Server  # noqa: E402
from tests.resume import check_resume  # noqa: E402
from tests.tokendata import documents, write_megatron, write_memmap  # noqa: E402

pytestmark = pytest.mark.integration

MIX = {"kind=text": 0.2, "kind=web": 0.5, "kind=code": 0.3}
SEQ = 16
TOPOLOGY = Topology(dp_groups=2, workers=2)
RANKS = [(g, w) for g in range(2) for w in range(2)]
WORDS = ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white"]


def submit(client: Any, tokenizer: Any, topology: Topology = TOPOLOGY, job: str = "pt") -> Any:
    return client.submit(
        job,
        mixture=MIX,
        unit="tokens",
        chunk_size=150,
        seed=6,
        topology=topology,
        tokenizer=tokenizer,
    )


def digest(window: Any) -> str:
    return hashlib.sha256(
        window.input_ids.tobytes() + window.labels.tobytes() + bytes([window.component])
    ).hexdigest()


def hashes(job: Any, tokenizer: Any, g: int, w: int, n: int) -> list[str]:
    stream = WindowStream(job, tokenizer, SEQ, dp_group=g, worker=w)
    return [digest(x) for x in itertools.islice(stream, n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """Text (JSONL), Megatron ids (web) and Dolma memmaps (code) of one tokenizer."""
    root = tmp_path_factory.mktemp("pretok")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(2, 30)))) for _ in range(300)]
    trained = train_bpe(texts, vocab_size=290)
    trained.save(root / "tokenizer.json")
    tokenizer = load_tokenizer(str(root / "tokenizer.json"))
    (root / "text").mkdir()
    (root / "text" / "a.jsonl").write_bytes(
        b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts)
    )
    eos = tokenizer.eos_id
    write_megatron(
        root / "web" / "a", documents(1, 200, vocab=tokenizer.vocab_size, eos=eos), "uint16"
    )
    write_memmap(
        root / "code" / "a.npy", documents(2, 200, vocab=tokenizer.vocab_size, eos=eos), "uint32"
    )
    home = root / "home"
    with Client.local(home) as client:
        cat = client.catalog
        cat.register("text", root / "text", constants={"kind": "text"}, progress=False)
        cat.register("web", root / "web", tokenizer=tokenizer, constants={"kind": "web"})
        cat.register(
            "code",
            root / "code",
            tokenizer=tokenizer,
            token_dtype="uint32",
            constants={"kind": "code"},
        )
        cat.count_tokens(tokenizer, datasets=["text"], progress=False)
    yield home, tokenizer


def test_the_server_streams_what_the_job_streams(corpus: tuple[Path, Any]) -> None:
    home, tokenizer = corpus
    with Client.local(home) as client:
        expected = {
            (g, w): hashes(submit(client, tokenizer), tokenizer, g, w, 60) for g, w in RANKS
        }
    server = Server(home).start()
    try:
        client = Client.remote(server.url)
        for g, w in RANKS:
            assert hashes(submit(client, tokenizer), tokenizer, g, w, 60) == expected[(g, w)]
        other = train_bpe(["something else " * 40], vocab_size=270)
        with pytest.raises(RemoteError, match="holds token ids of tokenizer"):
            submit(client, other, job="other")
        client.close()
    finally:
        server.stop()


def batches(loader: Any, n: int) -> list[str]:
    out = []
    for batch in itertools.islice(iter(loader), n):
        h = hashlib.sha256()
        for name in (
            "input_ids",
            "labels",
            "domain_ids",
            "position_ids",
            "cu_seqlens",
            "component",
        ):
            h.update(batch[name].numpy().tobytes())
        out.append(h.hexdigest())
    return out


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_stream_what_one_process_does(
    corpus: tuple[Path, Any], context: str
) -> None:
    home, tokenizer = corpus
    with Client.local(home) as client:

        def loader(workers: int) -> Any:
            dataset = TokenWindowDataset(
                submit(client, tokenizer, Topology(workers=2)), tokenizer, SEQ, batch_size=4
            )
            extra = {"multiprocessing_context": context} if workers else {}
            return torch.utils.data.DataLoader(
                dataset, batch_size=4, num_workers=workers, collate_fn=collate_windows, **extra
            )

        inline = batches(loader(0), 16)
        assert len(inline) == 16 and inline == batches(loader(2), 16)


def test_stateful_dataloader_resumes_exactly(corpus: tuple[Path, Any]) -> None:
    home, tokenizer = corpus
    with Client.local(home) as client:

        def loader() -> Any:
            dataset = TokenWindowDataset(
                submit(client, tokenizer, Topology(workers=2)), tokenizer, SEQ, batch_size=4
            )
            return StatefulDataLoader(
                dataset, batch_size=4, num_workers=2, collate_fn=collate_windows
            )

        full = batches(loader(), 14)

        def restored_after(k: int) -> list[str]:
            first = loader()
            it = iter(first)
            for _ in range(k):
                next(it)
            state = first.state_dict()
            del it
            second = loader()
            second.load_state_dict(state)
            return batches(second, 14 - k)

        check_resume(full, restored_after, [1, 6, 11])


def test_hf_adapter_yields_the_torch_windows(corpus: tuple[Path, Any]) -> None:
    pytest.importorskip("datasets")
    home, tokenizer = corpus
    with Client.local(home) as client:
        job = submit(client, tokenizer, Topology(workers=2))
        torch_windows = [
            (w["input_ids"].tolist(), int(w["component"]))
            for w in itertools.islice(TokenWindowDataset(job, tokenizer, SEQ), 30)
        ]
        hf = hf_dataset(submit(client, tokenizer, Topology(workers=2)), tokenizer, SEQ)
        assert [
            (list(e["input_ids"]), e["component"]) for e in itertools.islice(hf, 30)
        ] == torch_windows
