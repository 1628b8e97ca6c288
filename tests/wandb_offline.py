"""Reading wandb's offline run files (`run-<id>.wandb`) back: the records `wandb sync` would upload.

The file is a log of 32 KiB blocks of records (a 7-byte header: checksum, length, kind FULL / FIRST /
MIDDLE / LAST), each one protobuf `Record` of wandb's internal protocol, after a 7-byte file header.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def runs(folder: Path) -> list[dict]:
    """Each offline run under folder/wandb: its id, job_type, tags, and the keys (and values) it logged."""
    out = []
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        run = {"history": {}, "summary": {}}
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(id=record.run.run_id, job_type=record.run.job_type, group=record.run.run_group,
                           tags=list(record.run.tags))
            elif kind == "history":
                for item in record.history.item:
                    run["history"]["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
            elif kind == "summary":
                for item in record.summary.update:
                    run["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        out.append(run)
    return out
