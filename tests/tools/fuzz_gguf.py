"""Mutates a valid GGUF file (byte flips, splices of boundary values, truncations) and parses each
result with tova. Prints cases=N on success; a crash ends the process with a signal."""
import random
import struct
import sys
import tempfile
from pathlib import Path

import tova


def mutate(data: bytes, rng: random.Random) -> bytes:
    d = bytearray(data)
    kind = rng.random()
    if kind < 0.25:
        return bytes(d[: rng.randrange(len(d))])
    n = rng.choice([1, 1, 2, 4, 8])
    for _ in range(n):
        i = rng.randrange(len(d))
        if rng.random() < 0.5:
            d[i] = rng.randrange(256)
        else:  # plant a boundary integer where a length or count might be
            v = rng.choice([0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, 2**40, 3, 255])
            b = struct.pack("<Q", v)
            d[i:i + 8] = b
    return bytes(d[: len(data)]) if rng.random() < 0.8 else bytes(d)


def main() -> None:
    src, n, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    data = src.read_bytes()
    rng = random.Random(seed)
    loaded = rejected = 0
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "case.gguf"
        for _ in range(n):
            p.write_bytes(mutate(data, rng))
            try:
                f = tova.GGUFFile(p)
                _ = f.metadata
                for name in f.tensors:
                    try:
                        f.tensor(name)
                    except ValueError:
                        pass  # e.g. a type with no kernels
                    f.raw(name)
                loaded += 1
            except (ValueError, KeyError):
                rejected += 1
    print(f"cases={n} loaded={loaded} rejected={rejected}")


if __name__ == "__main__":
    main()
