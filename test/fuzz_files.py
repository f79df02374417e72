"""Fuzz the readers of files from outside: mutate a small bag (MCAP plain and zstd, sqlite3) and a
small checkpoint, and read each mutant the way eval and the node do. Only the package's own
errors may come out; a hang or an allocation beyond the address-space limit is a failure.

Seeded and bounded in time and iterations: `python test/fuzz_files.py WORKDIR --seconds 3` for
CI, `--seconds 600` for a longer hunt. On failure it prints the target, iteration and mutation,
keeps the mutant in WORKDIR and exits 1.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import signal
import struct
import sys
import time
import traceback
import zipfile
from pathlib import Path

INTERESTING = (0, 1, 0x7F, 0xFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**64 - 1)
ITERATION_TIMEOUT_S = 30


class Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise Hang(f"one iteration took more than {ITERATION_TIMEOUT_S} s")


def mutate(data: bytes, hot: list[int], rng: random.Random) -> tuple[bytes, str]:
    """One random mutation, placed at a structural offset (`hot`) most of the time."""
    data = bytearray(data)

    def place() -> int:
        if hot and rng.random() < 0.7:
            return min(len(data) - 1, max(0, rng.choice(hot) + rng.randrange(-4, 24)))
        return rng.randrange(len(data))

    kind = rng.choice(("flip", "flip", "u64", "u32", "truncate", "cut slice", "copy slice"))
    at = place()
    if kind == "flip":
        spots = [place() for _ in range(rng.randint(1, 8))]
        for spot in spots:
            data[spot] ^= 1 << rng.randrange(8)
        return bytes(data), f"flip bits at {spots}"
    if kind in ("u64", "u32"):
        value = rng.choice(INTERESTING) if rng.random() < 0.8 else rng.getrandbits(64)
        size = 8 if kind == "u64" else 4
        data[at:at + size] = struct.pack("<Q" if size == 8 else "<I", value % (1 << (8 * size)))
        return bytes(data), f"{kind} {value} at {at}"
    if kind == "truncate":
        return bytes(data[:at]), f"truncate at {at}"
    length = rng.randint(1, 4096)
    if kind == "cut slice":
        del data[at:at + length]
        return bytes(data), f"cut {length} bytes at {at}"
    source = rng.randrange(len(data))
    data[at:at] = data[source:source + length]
    return bytes(data), f"copy {length} bytes from {source} to {at}"


def _mcap_offsets(data: bytes) -> list[int]:
    """Record headers of an MCAP file, inside chunks too (their records start after 40 + name bytes)."""
    hot, pos = [0, len(data) - 37], 8
    while pos + 9 <= len(data):
        op, length = struct.unpack_from("<BQ", data, pos)
        hot.append(pos)
        if op == 0x06:
            hot += [pos + 9 + 16, pos + 9 + 24, pos + 9 + 28]  # sizes, CRC, compression
        if op == 0x02:
            break
        pos += 9 + length
    return hot


def _zip_offsets(path: Path) -> list[int]:
    """The pickle and the zip's directory: where a checkpoint's structure lives."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    hot = [info.header_offset for info in infos]
    pickle_entry = next(i for i in infos if i.filename.endswith("data.pkl"))
    start = pickle_entry.header_offset + 30 + len(pickle_entry.filename) + len(pickle_entry.extra)
    hot += list(range(start, start + pickle_entry.file_size, 3))
    size = path.stat().st_size
    hot += list(range(max(0, size - 22 - 46 * len(infos) - 200), size, 2))
    return hot


def make_targets(work: Path):
    """(name, seed file, hot offsets, reader) for every target."""
    import torch

    from sam_mmseg_ros.contracts import BAG_TOPICS
    from sam_mmseg_ros.data.bag_reader import BagReport
    from sam_mmseg_ros.data.bags import read_bag, write_bag
    from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence
    from sam_mmseg_ros.ingest import FrameFeeder, topic_kinds
    from sam_mmseg_ros.model import build_model
    from sam_mmseg_ros.model.checkpoint import load_checkpoint, save_checkpoint
    from sam_mmseg_ros.node_settings import NodeSettings
    from sam_mmseg_ros.reporting import ProblemLog

    frames = list(generate_sequence(SequenceConfig(width=48, height=32, num_frames=2, lidar_columns=128,
                                                   event_width=24, event_height=16, seed=7)))
    settings = NodeSettings.from_file(overrides={"event_sensor_size": [24, 16]})
    kinds = topic_kinds(BAG_TOPICS)

    def read_and_decode(bag: Path) -> bool:
        """Read the bag and feed its sensor messages to the node's decoders; True if damage was found."""
        feeder = FrameFeeder(settings, ProblemLog(lambda text: None))
        report = BagReport(log_problems=False)
        for topic, stamp, _, msg in read_bag(bag, report=report):
            if topic in kinds:
                feeder.feed(kinds[topic], msg, stamp)
        return bool(report) or bool(feeder.problems.current)

    targets = []
    for storage, compress in (("mcap", False), ("mcap", True), ("sqlite3", False)):
        bag = work / f"seed-{storage}{'-zstd' if compress else ''}"
        write_bag(frames, bag, storage)
        if compress:
            _compress(bag)
        file = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
        data = file.read_bytes()
        hot = _mcap_offsets(data) if storage == "mcap" else list(range(0, 4096, 7)) + list(range(0, len(data), 4096))
        targets.append((bag.name, file, hot, lambda mutant=bag: read_and_decode(mutant)))

    torch.manual_seed(0)
    model = build_model("tiny", img_size=32, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                        window_size=2, aux_block_indexes=(0, 1), out_chans=32, decoder_heads=2, decoder_mlp_dim=64,
                        lora_rank=2, num_classes=5)
    checkpoint = save_checkpoint(work / "seed.pt", model, trained=True, step=3)
    targets.append(("checkpoint", checkpoint, _zip_offsets(checkpoint), lambda: load_checkpoint(checkpoint)))
    return targets


def _compress(bag: Path) -> None:
    """The bag rewritten with zstd chunks, as rosbag2's MCAP recorder writes by default."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    plain = bag.with_name(bag.name + "-plain")
    bag.rename(plain)
    writer = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with Reader(plain) as reader, writer:
        out = {c.id: writer.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest,
                                           offered_qos_profiles=c.ext.offered_qos_profiles)
               for c in reader.connections}
        for connection, stamp, raw in reader.messages():
            writer.write(out[connection.id], stamp, raw)
    shutil.rmtree(plain)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="folder for seeds and a failing mutant")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per target")
    parser.add_argument("--iterations", type=int, default=400, help="at most this many mutants per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--headroom-mib", type=int, default=768,
                        help="address space allowed above what the process holds after set-up")
    args = parser.parse_args()

    import torch

    from sam_mmseg_ros.contracts import BadFileError, InputError

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    targets = make_targets(args.work)
    size = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    limit = size + (args.headroom_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)
    rng = random.Random(args.seed)
    for name, file, hot, read in targets:
        seed_bytes = file.read_bytes()
        started, done, refused, skipped = time.monotonic(), 0, 0, 0
        try:
            while done < args.iterations and time.monotonic() - started < args.seconds:
                mutant, how = mutate(seed_bytes, hot, rng)
                file.write_bytes(mutant)
                signal.alarm(ITERATION_TIMEOUT_S)
                try:
                    skipped += read() is True
                except (BadFileError, InputError):
                    refused += 1
                finally:
                    signal.alarm(0)
                done += 1
        except BaseException:  # noqa: BLE001 - anything else is the finding
            keep = args.work / f"failing-{name}{file.suffix}"
            keep.write_bytes(mutant)
            print(f"FAIL {name} iteration {done} ({how}); mutant kept as {keep}", flush=True)
            traceback.print_exc()
            return 1
        finally:
            file.write_bytes(seed_bytes)
        print(f"{name}: {done} mutants in {time.monotonic() - started:.1f} s: {refused} refused with the "
              f"package's errors, {skipped} read with their damage skipped and reported", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB, address-space limit {limit / 2**20:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
