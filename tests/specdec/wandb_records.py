"""Read the records of an offline W&B run file (run-*.wandb) without a network or a W&B server:
the file is a 7-byte header (':W&B', magic, version) then a LevelDB-style log of protobuf
`Record`s in 32 KiB blocks (crc32 4 bytes, length 2, type 1: FULL/FIRST/MIDDLE/LAST)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
    return out


def read_run(path: Path) -> dict:
    """{'history': [{key: value}], 'summary': {key: value}, 'config': {key: value},
    'group': run group, 'name': display name}."""
    from wandb.proto import wandb_internal_pb2 as pb

    history, summary, config, run = [], {}, {}, {}
    for raw in raw_records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
            run = {"group": rec.run.run_group, "name": rec.run.display_name}
    return {"history": history, "summary": summary, "config": config, **run}
