"""LitServe serving the same ONNX files: `python -m bench.servers.litserve_server PORT BATCH_TIMEOUT`.

One LitAPI per endpoint, on Switchyard's paths, with max_batch_size=64 requests per batch. A
request may carry several rows, so batch() flattens them and unbatch() gives each request its own.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import litserve as ls
import numpy as np

from bench.servers.common import FIELDS, PATHS, load_stored, tags_from_env


class RowsAPI(ls.LitAPI):
    def __init__(self, family: str, tag: str, **kwargs: Any) -> None:
        super().__init__(api_path=PATHS[family], **kwargs)
        self.family, self.tag = family, tag

    def setup(self, device: str) -> None:
        self.model = load_stored(self.tag, threads=2)

    # No annotation on `request`: LitServe reads it to build the endpoint, and only an
    # unannotated parameter is taken as the JSON body.
    def decode_request(self, request, **kwargs: Any) -> list[Any]:  # type: ignore[no-untyped-def]
        return list(request[FIELDS[self.family]])

    def batch(self, inputs: list[list[Any]]) -> tuple[list[Any], list[int]]:
        return [row for rows in inputs for row in rows], [len(rows) for rows in inputs]

    def predict(self, x: Any, **kwargs: Any) -> Any:
        if isinstance(x, tuple):  # batched: (rows, sizes)
            return self.model.run(x[0]), x[1]
        return self.model.run(x)

    def unbatch(self, output: tuple[np.ndarray, list[int]]) -> list[np.ndarray]:
        rows, sizes = output
        bounds = np.cumsum([0, *sizes])
        return [rows[a:b] for a, b in itertools.pairwise(bounds)]

    def encode_response(self, output: np.ndarray, **kwargs: Any) -> dict[str, Any]:
        return self.model.answer(output)


def main(port: int, batch_timeout: float) -> None:
    apis = [RowsAPI(f, t, max_batch_size=64, batch_timeout=batch_timeout) for f, t in tags_from_env().items()]
    server = ls.LitServer(apis, accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=port, generate_client_file=False)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
