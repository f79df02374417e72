"""Damaged bags: truncated recordings, corrupt chunks, unknown compression, absurd sizes and cut
CDR. The reader skips what is damaged, counts and reports it (file, offset, topic) and goes on;
a bag that cannot be read at all is a BagError. `eval` and `replay` share the reader.

Every broken bag is made from a small bag the package writes (`write_bag`), by editing its bytes
or by rewriting its messages with `rosbags`."""

from __future__ import annotations

import logging
import random
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_mmseg_ros.cli import EXIT_BAD_FILE
from sam_mmseg_ros.cli import main as cli_main
from sam_mmseg_ros.contracts import BAG_TOPICS, GROUND_TRUTH_TOPIC
from sam_mmseg_ros.data.bag_reader import BagError, BagReport, bag_topics, iter_messages, message_counts
from sam_mmseg_ros.data.bags import bag_image_encodings, read_bag, read_raw, write_bag
from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence

FRAMES = 4


@pytest.fixture(scope="module")
def frames():
    # Full LiDAR clouds (~1 MB a frame) make the writer close a chunk about every frame.
    return list(generate_sequence(SequenceConfig(width=64, height=48, num_frames=FRAMES, seed=11)))


@pytest.fixture(scope="module")
def intact(frames, tmp_path_factory) -> Path:
    bag = tmp_path_factory.mktemp("bags") / "intact"
    write_bag(frames, bag, "mcap")
    return bag


def _mcap_file(bag: Path) -> Path:
    return next(bag.glob("*.mcap"))


def _records(path: Path) -> list[tuple[int, int, int]]:
    """(op, byte offset, length) of the data section's records, up to DataEnd."""
    data, pos, out = path.read_bytes(), 8, []
    while True:
        op, length = struct.unpack_from("<BQ", data, pos)
        out.append((op, pos, length))
        if op == 0x0F:
            return out
        pos += 9 + length


def _chunks(path: Path) -> list[int]:
    return [pos for op, pos, _ in _records(path) if op == 0x06]


def _copy(bag: Path, dst: Path) -> Path:
    shutil.copytree(bag, dst)
    return dst


def _edit(bag: Path, dst: Path, edit) -> Path:
    """A copy of `bag` whose MCAP bytes are `edit(bytearray)`."""
    out = _copy(bag, dst)
    file = _mcap_file(out)
    data = bytearray(file.read_bytes())
    file.write_bytes(bytes(edit(data) or data))
    return out


def _rewrite(bag: Path, dst: Path, storage: str = "mcap", compress: bool = False, change=None) -> Path:
    """`bag` written again by rosbags, with `change(index, topic, raw) -> raw` applied to each
    message; compressed chunks (zstd) when `compress`."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    writer = Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    if compress:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with Reader(bag) as reader, writer:
        connections = {c.id: writer.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest,
                                                   offered_qos_profiles=c.ext.offered_qos_profiles)
                       for c in reader.connections}
        for index, (connection, stamp, raw) in enumerate(reader.messages()):
            raw = change(index, connection.topic, bytes(raw)) if change else raw
            writer.write(connections[connection.id], stamp, raw)
    return dst


def _read(bag: Path) -> tuple[list, BagReport]:
    """The bag's messages without their file name (copies are compared), and the report."""
    report = BagReport()
    return [m._replace(file="") for m in iter_messages(bag, report=report)], report


def _in_chunk(messages, chunk: int) -> list:
    return [m for m in messages if m.where.startswith(f"byte {chunk} ")]


# --------------------------------------------------------------------------- the reader


def test_intact_bags_read_the_same_as_rosbags_and_report_nothing(intact, tmp_path):
    from rosbags.rosbag2 import Reader

    assert len(_chunks(_mcap_file(intact))) >= 3
    for bag in (intact, _rewrite(intact, tmp_path / "zstd", compress=True),
                _rewrite(intact, tmp_path / "sqlite", storage="sqlite3")):
        with Reader(bag) as reader:
            expected = [(c.topic, int(t), c.msgtype, bytes(raw)) for c, t, raw in reader.messages()]
        messages, report = _read(bag)
        assert [(m.topic, m.log_time, m.msgtype, m.data) for m in messages] == expected
        assert not report
        assert message_counts(bag) == Counter(m.topic for m in messages)


@pytest.mark.parametrize("cut", ["inside a chunk", "inside a record header", "in the summary"])
def test_a_truncated_recording_is_read_up_to_the_cut(intact, tmp_path, cut, caplog):
    messages, _ = _read(intact)
    file = _mcap_file(intact)
    chunks = _chunks(file)
    end = {"inside a chunk": chunks[2] + 5000, "inside a record header": chunks[2] + 4,
           "in the summary": _records(file)[-1][1] + 9 + 4 + 100}[cut]
    bag = _edit(intact, tmp_path / "cut", lambda data: data[:end])
    (bag / "metadata.yaml").unlink()  # a recording cut by a power loss has none
    with caplog.at_level(logging.WARNING):
        got, report = _read(bag)
    if cut == "in the summary":
        assert got == messages and not report
        return
    assert got == [m for m in messages if int(m.where.split()[1]) < chunks[2]]
    assert len(got) > 0 and report.total_skipped == 0
    (file_name, topic, kind), = report.problems
    assert kind == "truncated file" and file_name == str(_mcap_file(bag))
    assert f"byte {chunks[2]}" in caplog.text and str(_mcap_file(bag)) in caplog.text


def _with_crc(chunk: int):
    """An edit that writes the chunk's CRC into its header, as rosbag2's MCAP writer does (rosbags
    writes 0, 'not computed'), then flips a byte of its first message."""

    def edit(data):
        _, length = struct.unpack_from("<BQ", data, chunk)
        records = chunk + 9 + 8 + 8 + 8 + 4 + 4 + 8  # times, sizes, crc, empty compression string
        data[chunk + 9 + 24:chunk + 9 + 28] = struct.pack("<I", zlib.crc32(data[records:chunk + 9 + length]))
        data[records + 200] ^= 0xFF

    return edit


@pytest.mark.parametrize("compressed", [False, True])
def test_a_corrupt_chunk_is_skipped_and_its_messages_counted(intact, tmp_path, compressed):
    bag = _rewrite(intact, tmp_path / "zstd", compress=True) if compressed else intact
    messages, _ = _read(bag)
    chunk = _chunks(_mcap_file(bag))[1]

    def flip_compressed(data):
        data[chunk + 9 + 40 + 4] ^= 0xFF  # the zstd frame's magic number (zstd has no checksum by default)

    broken = _edit(bag, tmp_path / "flipped", flip_compressed if compressed else _with_crc(chunk))
    got, report = _read(broken)
    lost = _in_chunk(messages, chunk)
    assert got == [m for m in messages if m not in lost] and lost
    problem = report.problems[(str(_mcap_file(broken)), "", "corrupt chunk")]
    assert problem.where == f"byte {chunk}" and ("zstd" in problem.detail if compressed else "CRC" in problem.detail)
    assert report.skipped == Counter(m.topic for m in lost)  # counted from the chunk's message index
    assert any(f"{len(lost)} messages skipped" in note and BAG_TOPICS["lidar"] in note for note in report.notes())


def test_a_corrupt_record_inside_a_chunk_keeps_the_records_before_it(intact, tmp_path):
    messages, _ = _read(intact)
    chunk = _chunks(_mcap_file(intact))[1]
    in_chunk = _in_chunk(messages, chunk)
    third = int(in_chunk[2].where.split("chunk offset ")[1].rstrip(")"))
    records = chunk + 9 + 40

    def edit(data):
        data[records + third + 1:records + third + 9] = struct.pack("<Q", 1 << 40)  # its length

    got, report = _read(_edit(intact, tmp_path / "record", edit))
    assert got == [m for m in messages if m not in in_chunk[2:]]
    problem, = report.problems.values()
    assert problem.lost_unknown and f"record at offset {third} inside it" in problem.detail


def test_unknown_compression_and_absurd_chunk_sizes_skip_that_chunk(intact, tmp_path):
    zstd = _rewrite(intact, tmp_path / "zstd", compress=True)
    messages, _ = _read(zstd)
    chunk = _chunks(_mcap_file(zstd))[1]
    lost = _in_chunk(messages, chunk)

    def rename(data):
        at = data.index(b"zstd", chunk)
        data[at:at + 4] = b"brot"

    def absurd(size):
        def edit(data):
            data[chunk + 9 + 16:chunk + 9 + 24] = struct.pack("<Q", size)  # uncompressed_size
        return edit

    for name, edit, kind in (("brot", rename, "unknown compression"), ("huge", absurd(1 << 50), "oversized chunk"),
                             ("small", absurd(100), "corrupt chunk")):
        got, report = _read(_edit(zstd, tmp_path / name, edit))
        assert got == [m for m in messages if m not in lost], name
        assert [key[2] for key in report.problems] == [kind] and report.total_skipped == len(lost)


def test_an_absurd_record_length_stops_reading_there(intact, tmp_path):
    messages, _ = _read(intact)
    chunk = _chunks(_mcap_file(intact))[2]

    def edit(data):
        data[chunk + 1:chunk + 9] = struct.pack("<Q", 1 << 62)

    got, report = _read(_edit(intact, tmp_path / "absurd", edit))
    assert got == [m for m in messages if int(m.where.split()[1]) < chunk]
    problem, = report.problems.values()
    assert problem.where == f"byte {chunk}" and f"declares {1 << 62} bytes" in problem.detail


def _after_frame_id(raw: bytes) -> int:
    """Offset of the field after an Image header: CDR header, stamp, frame_id, 4-byte alignment."""
    (length,) = struct.unpack_from("<I", raw, 4 + 8)
    at = 4 + 8 + 4 + length
    return at + -at % 4


def _cut(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _absurd_data_length(raw: bytes) -> bytes:
    """An Image whose `data` sequence claims 4294967280 bytes."""
    at = _after_frame_id(raw) + 8  # height, width
    (encoding_length,) = struct.unpack_from("<I", raw, at)
    at += 4 + encoding_length + 1  # encoding (with its NUL), is_bigendian
    at += -at % 4 + 4  # alignment, step
    return raw[:at] + struct.pack("<I", 0xFFFFFFF0) + raw[at + 4:]


def _absurd_height(raw: bytes) -> bytes:
    """An Image that deserializes but claims 2^30 rows."""
    at = _after_frame_id(raw)
    return raw[:at] + struct.pack("<I", 1 << 30) + raw[at + 4:]


def _first_of(**edits):
    """A `change` for _rewrite that edits the first message of each topic named (by BAG_TOPICS
    kind, or 'truth')."""
    topics = {GROUND_TRUTH_TOPIC if kind == "truth" else BAG_TOPICS[kind]: edit for kind, edit in edits.items()}
    done = set()

    def change(index, topic, raw):
        if topic in topics and topic not in done:
            done.add(topic)
            return topics[topic](raw)
        return raw

    return change


CUT_CDR = {"rgb": _cut, "depth": _absurd_data_length}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_messages_with_cut_or_absurd_cdr_are_skipped_and_counted(intact, tmp_path, storage):
    bag = _rewrite(intact, tmp_path / "cdr", storage, change=_first_of(**CUT_CDR))
    report = BagReport()
    got = list(read_bag(bag, report=report))
    good = list(read_bag(intact))
    broken = {BAG_TOPICS["rgb"], BAG_TOPICS["depth"]}
    assert len(got) == len(good) - 2 and report.skipped == Counter({t: 1 for t in broken})
    file = str(_storage_file(bag)) if storage == "mcap" else str(bag)  # rosbags reads sqlite3 bags whole
    for topic in broken:
        problem = report.problems[(file, topic, "undecodable message")]
        assert problem.count == 1 and problem.where.startswith("byte " if storage == "mcap" else "message ")
    assert "Invalid sequence length 4294967280" in " ".join(report.notes())
    # replay's view: the raw bytes, checked before they would be published
    raw_report = BagReport()
    assert len(list(read_raw(bag, report=raw_report, check_cdr=True))) == len(good) - 2
    assert raw_report.total_skipped == 2


def _storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))


def test_unreadable_bags_are_bag_errors_naming_the_file(intact, tmp_path):
    sqlite = _rewrite(intact, tmp_path / "sqlite", storage="sqlite3")
    db = _storage_file(sqlite)
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    not_mcap = _edit(intact, tmp_path / "not_mcap", lambda data: b"PK\x03\x04" + data[4:])
    empty = tmp_path / "empty"
    empty.mkdir()
    for bag, message in ((sqlite, "cannot be read"), (not_mcap, "is not an MCAP file"),
                         (empty, "holds no metadata.yaml and no single rosbag2 storage file"), (tmp_path / "nowhere", "does not exist")):
        with pytest.raises(BagError, match=message) as error:
            list(read_bag(bag))
        assert str(bag) in str(error.value)


def test_a_sqlite3_recording_without_metadata_is_read_from_its_database(intact, tmp_path):
    bag = _rewrite(intact, tmp_path / "sqlite", storage="sqlite3")
    (bag / "metadata.yaml").unlink()
    assert len(list(read_bag(bag))) == len(_read(intact)[0])


def test_damaged_metadata_falls_back_to_the_mcap_files(intact, tmp_path):
    bag = _copy(intact, tmp_path / "meta")
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed")
    messages, report = _read(bag)
    assert len(messages) == len(_read(intact)[0])
    assert [key[2] for key in report.problems] == ["unreadable metadata"]
    assert bag_topics(bag) == bag_topics(intact)
    with pytest.raises(BagError, match="unreadable, so the sam_mmseg.encodings the bag declares are unknown"):
        bag_image_encodings(bag)  # what eval needs from it is unknown: a clear error, not a guess


def test_topics_of_a_cut_recording_come_from_its_data_section(intact, tmp_path):
    chunks = _chunks(_mcap_file(intact))
    bag = _edit(intact, tmp_path / "cut", lambda data: data[: chunks[1] + 100])
    topics = bag_topics(bag)
    assert set(topics) >= {BAG_TOPICS["rgb"], BAG_TOPICS["lidar"]}
    assert topics[BAG_TOPICS["rgb"]][0] == "sensor_msgs/msg/Image"


# --------------------------------------------------------------------------- eval and replay


@pytest.fixture(scope="module")
def backend():
    from sam_mmseg_ros.engine import create_backend

    torch.set_num_threads(1)
    return create_backend("torch", device="cpu", precision="fp32")


def test_eval_survives_a_truncated_bag_with_cut_cdr_and_reports_it(intact, tmp_path, backend):
    from sam_mmseg_ros.eval.offline import evaluate_bag
    from sam_mmseg_ros.eval.report import write_report

    rewritten = _rewrite(intact, tmp_path / "damaged", change=_first_of(truth=_absurd_height, **CUT_CDR))
    chunks = _chunks(_mcap_file(rewritten))
    bag = _edit(rewritten, tmp_path / "damaged_cut", lambda data: data[: chunks[-1] + 100])
    result = evaluate_bag(bag, backend, overrides={"event_sensor_size": [64, 48]}, subsets={}, progress=False)
    assert 0 < result.frames < FRAMES
    notes = "\n".join(result.notes)
    assert "damaged bag" in notes and "truncated file" in notes and "undecodable message" in notes
    assert "undecodable ground truth at record time" in notes and "image buffer truncated" in notes
    summary = write_report(result, tmp_path / "report", with_figures=False)
    assert "truncated file" in (tmp_path / "report" / "report.md").read_text() and summary["frames"] == result.frames


def test_eval_command_refuses_a_file_that_is_no_bag(tmp_path, caplog):
    bag = tmp_path / "fake.mcap"
    bag.write_bytes(b"\x00" * 64)
    with caplog.at_level(logging.ERROR):
        assert cli_main(["eval", str(bag), "--out", str(tmp_path / "out"), "--no-progress"]) == EXIT_BAD_FILE
    assert f"{bag} is not an MCAP file" in caplog.text


@pytest.mark.ros
def test_replay_skips_damage_and_publishes_the_rest(intact, tmp_path, monkeypatch, caplog):
    from sam_mmseg_ros.ros.replay import replay_bag

    rewritten = _rewrite(intact, tmp_path / "damaged", change=_first_of(**CUT_CDR))
    chunks = _chunks(_mcap_file(rewritten))
    bag = _edit(rewritten, tmp_path / "damaged_cut", lambda data: data[: chunks[-1] + 100])
    sensors = [BAG_TOPICS[kind] for kind in ("camera_info", "rgb", "depth", "lidar")]  # sensor_msgs only
    readable = len(list(read_raw(bag, sensors, report=BagReport(log_problems=False), check_cdr=True)))
    monkeypatch.setenv("ROS_DOMAIN_ID", str(100 + random.randrange(100)))
    with caplog.at_level(logging.WARNING):
        published = replay_bag(bag, rate=20.0, clock=False, discovery_wait_s=0, topics=sensors)
    assert published == readable > 0
    assert "truncated file" in caplog.text and "undecodable message" in caplog.text
    assert "2 messages were not published" in caplog.text


@pytest.mark.ros
def test_replay_command_refuses_a_file_that_is_no_bag(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(100 + random.randrange(100)))
    bag = tmp_path / "fake.mcap"
    bag.write_bytes(np.zeros(64, np.uint8).tobytes())
    with caplog.at_level(logging.ERROR):
        assert cli_main(["replay", str(bag), "--discovery-wait", "0"]) == 1
    assert "cannot replay" in caplog.text and "is not an MCAP file" in caplog.text
