"""rosbag2 reading that survives damaged bags: truncated recordings, corrupt chunks, unknown
compression, cut or absurd records.

Bags come from other vehicles and from recordings that were cut when the power went, so the
reader trusts no length or size in them:
- MCAP files are read here, record by record through the data section, every declared length
  checked against what is left of the file before anything is read or allocated; chunks are
  decompressed with their declared size as a hard bound (no zip bombs), their CRC checked.
  The summary and footer are not needed, so a recording cut short is read up to the cut.
- sqlite3 storage (and file-compressed bags) go through `rosbags`, its errors turned into ours.
Damage confined to part of a file (a chunk, a record, a message) is skipped, counted and
reported in a `BagReport`, and reading goes on; a warning names the file, the byte offset (or
message number) and the topic when known. A file that cannot be read at all raises `BagError`.

MCAP chunks are read in file order, each chunk's messages sorted by log time (recorders write
chunks in time order); rosbags merges overlapping chunks, which no recorder writes.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from zlib import crc32

from sam_mmseg_ros.contracts import BadFileError

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 512 << 20
"""Largest MCAP chunk or message read, compressed or not (recorders write chunks of about 1 MB and
one chunk per larger message; an 8K RGB image is 106 MB). A bigger declared size is damage, not an
allocation: reading one chunk holds at most about twice this."""
MAX_SUMMARY_BYTES = 64 << 20
MAX_LOGGED = 20
"""Distinct problems logged one by one; further ones are only counted (see BagReport.notes)."""

_MAGIC = b"\x89MCAP0\r\n"
_RECORD = struct.Struct("<BQ")
_OPS = {0x01: "Header", 0x02: "Footer", 0x03: "Schema", 0x04: "Channel", 0x05: "Message", 0x06: "Chunk",
        0x07: "MessageIndex", 0x08: "ChunkIndex", 0x09: "Attachment", 0x0A: "AttachmentIndex",
        0x0B: "Statistics", 0x0C: "Metadata", 0x0D: "MetadataIndex", 0x0E: "SummaryOffset", 0x0F: "DataEnd"}
_MESSAGE_HEADER = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time


class BagError(BadFileError):
    """A bag that cannot be read at all; the message names the file and why."""


@dataclass
class _Problem:
    where: str  # of the first occurrence
    detail: str
    count: int = 0
    lost: Counter = field(default_factory=Counter)
    lost_unknown: bool = False


class BagReport:
    """What reading a bag skipped: one entry per (file, topic, kind of damage), with the first
    place it was seen, how often, and how many messages were lost by topic."""

    def __init__(self, log_problems: bool = True) -> None:
        self.problems: dict[tuple[str, str, str], _Problem] = {}
        self.skipped: Counter = Counter()  # topic ("" when unknown) -> messages skipped or lost
        self._log = log_problems

    def add(self, file: str, where: str, topic: str, kind: str, detail: str = "",
            lost: int | Counter | None = 1) -> None:
        """Record damage at `where` ("byte 123", "message 18") of `file`; `lost`: messages lost
        (a count, counts by topic, or None when unknown)."""
        key = (file, topic, kind)
        new = key not in self.problems
        problem = self.problems.setdefault(key, _Problem(where, detail))
        problem.count += 1
        if lost is None:
            problem.lost_unknown = True
        else:
            lost = lost if isinstance(lost, Counter) else Counter({topic: lost})
            problem.lost.update(lost)
            self.skipped.update(lost)
        if new and self._log:
            if len(self.problems) <= MAX_LOGGED:
                log.warning("%s", _line(key, problem, first=True))
            elif len(self.problems) == MAX_LOGGED + 1:
                log.warning("%s: more damage; further problems are only counted", file)

    def __bool__(self) -> bool:
        return bool(self.problems)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def notes(self) -> list[str]:
        """One line per problem, for reports."""
        return [_line(key, problem) for key, problem in self.problems.items()]


def _line(key: tuple[str, str, str], problem: _Problem, first: bool = False) -> str:
    file, topic, kind = key
    place = f"at {problem.where}" if first or problem.count == 1 else f"{problem.count} times, first at {problem.where}"
    text = f"{file}: {kind} {place}{f' on {topic}' if topic else ''}"
    if problem.detail:
        text += f": {problem.detail}"
    total = sum(problem.lost.values())
    if problem.lost_unknown:
        text += "; messages after it could not be read"
    elif total:
        by_topic = ", ".join(f"{t or '?'}: {n}" for t, n in sorted(problem.lost.items()) if t != topic)
        text += f"; {total} message{'s' * (total != 1)} skipped" + (f" ({by_topic})" if by_topic else "")
    return text


class RawMessage(NamedTuple):
    topic: str
    log_time: int  # record time, ns
    msgtype: str
    data: bytes  # CDR
    file: str
    where: str  # "byte N" in an MCAP file, "message N" in sqlite3


# ------------------------------------------------------------------------------------ MCAP


class _Corrupt(Exception):
    """A record whose bytes contradict its own lengths (internal; becomes a report entry)."""


class _Cursor:
    """Bounded little-endian reads over a buffer: reading past the end is _Corrupt."""

    def __init__(self, buffer) -> None:
        self.buffer = memoryview(buffer)
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.buffer) - self.pos

    def take(self, n: int) -> memoryview:
        if n > self.left:
            raise _Corrupt(f"needs {n} bytes at offset {self.pos}, {self.left} left")
        self.pos += n
        return self.buffer[self.pos - n:self.pos]

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))

    def string(self) -> str:
        (size,) = self.unpack(_U32)
        try:
            return str(self.take(size), "utf-8")
        except UnicodeDecodeError as exc:
            raise _Corrupt(f"string is not UTF-8 ({exc.reason})") from None


_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


def _zstd():
    try:
        from compression import zstd
    except ImportError:  # Python < 3.14
        from backports import zstd
    return zstd


def _decompress(compression: str, data: memoryview, size: int) -> bytes:
    """`data` decompressed to exactly `size` bytes, never more (_Corrupt otherwise)."""
    if compression == "":
        out = bytes(data)
    elif compression == "zstd":
        zstd = _zstd()
        parts, left = [], data
        try:
            while left and sum(map(len, parts)) <= size:  # a chunk may hold several frames
                decompressor = zstd.ZstdDecompressor()
                parts.append(decompressor.decompress(left, max_length=size + 1 - sum(map(len, parts))))
                if not decompressor.eof:
                    break
                left = decompressor.unused_data
        except zstd.ZstdError as exc:
            raise _Corrupt(f"zstd: {exc}") from None
        out = parts[0] if len(parts) == 1 else b"".join(parts)
    elif compression == "lz4":
        import lz4.frame

        decompressor = lz4.frame.LZ4FrameDecompressor()
        try:
            out = decompressor.decompress(bytes(data), max_length=size + 1)
        except (RuntimeError, ValueError) as exc:
            raise _Corrupt(f"lz4: {exc}") from None
    else:
        raise AssertionError(compression)
    if len(out) > size:
        raise _Corrupt(f"decompresses to more than the {size} bytes it declares")
    if len(out) < size:
        raise _Corrupt(f"decompresses to {len(out)} bytes, it declares {size} (cut or corrupt)")
    return out


DECOMPRESSIONS = ("", "zstd", "lz4")


@dataclass
class _Channel:
    topic: str
    schema_id: int
    encoding: str
    metadata: dict[str, str]


class McapFile:
    """One MCAP file read defensively (see the module docstring)."""

    def __init__(self, path: Path, report: BagReport, message_compression: str | None = None) -> None:
        self.path = path
        self.name = str(path)
        self.report = report
        self.message_compression = message_compression
        self.schemas: dict[int, str] = {}  # id -> message type
        self.definitions: dict[int, tuple[str, str]] = {}  # id -> (encoding, text) the recorder embedded
        self.channels: dict[int, _Channel] = {}
        self.statistics: dict[int, int] | None = None  # channel id -> message count, from the summary
        self._pending: tuple[str, str, str, Counter] | None = None  # damaged chunk awaiting its index counts
        self._topics: set[str] | None = None

    # ---- summary (optional: a cut recording has none)

    def read_summary(self) -> None:
        """Schemas, channels and statistics from the summary section, when the footer is intact."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8 + 9 + 20 + 8:
                    return
                f.seek(size - 8 - 29)
                tail = f.read(37)
                if tail[-8:] != _MAGIC or tail[0] != 0x02:
                    return
                summary_start = _U64.unpack_from(tail, 9)[0]
                footer = size - 8 - 29
                if not 8 <= summary_start <= footer or footer - summary_start > MAX_SUMMARY_BYTES or not summary_start:
                    return
                f.seek(summary_start)
                cursor = _Cursor(f.read(footer - summary_start))
            while cursor.left:
                op, length = cursor.unpack(_RECORD)
                body = cursor.take(length)
                if op in (0x03, 0x04):
                    self._define(op, body)
                elif op == 0x0B:
                    self.statistics = _statistics(body)
        except (OSError, _Corrupt, struct.error) as exc:
            log.debug("%s: summary unreadable (%s); the data section is read without it", self.path, exc)

    # ---- data section

    def messages(self, topics: set[str] | None = None) -> Iterator[RawMessage]:
        self._topics = topics
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed in finally, across yields
        except OSError as exc:
            raise BagError(f"{self.path} cannot be opened: {exc}") from None
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if head != _MAGIC:
                raise BagError(f"{self.path} is not an MCAP file" + (" (it is empty)" if not head else
                                                                     f" (it starts with {head!r})"))
            yield from self._data_section(f, size)
        finally:
            self._flush_pending()
            f.close()

    def _data_section(self, f, size: int) -> Iterator[RawMessage]:
        pos = 8
        while True:
            if size - pos < _RECORD.size:
                if pos == size:
                    self._damage(pos, "", "truncated file", "it ends without the MCAP footer (the recording was "
                                 "cut); every complete record before was read", lost=0)
                else:
                    self._damage(pos, "", "truncated file", f"it ends inside a record header ({size - pos} bytes)",
                                 lost=None)
                return
            f.seek(pos)
            op, length = _RECORD.unpack(f.read(_RECORD.size))
            name = _OPS.get(op, f"op 0x{op:02x}")
            if op not in _OPS and op < 0x80:  # 0x80 and above: private records, skipped
                self._damage(pos, "", "corrupt record", f"unknown record op 0x{op:02x}: the file is corrupt from "
                             "here", lost=None)
                return
            if op != 0x07:
                self._flush_pending()
            if op in (0x02, 0x0F):  # Footer or DataEnd: the data section is complete
                return
            body_start = pos + _RECORD.size
            if length > size - body_start:
                self._damage(pos, "", "truncated file", f"{name} record declares {length} bytes, {size - body_start} "
                             "are left", lost=None)
                return
            if op == 0x06:
                yield from self._chunk(f, pos, length)
            elif op in (0x03, 0x04, 0x05) and length > MAX_CHUNK_BYTES:
                self._damage(pos, "", "oversized record", f"{name} record of {length} bytes, more than "
                             f"{MAX_CHUNK_BYTES}; skipped", lost=int(op == 0x05))
            elif op in (0x03, 0x04, 0x05):
                try:
                    message = self._record(op, memoryview(f.read(length)), pos)
                except _Corrupt as exc:
                    self._damage(pos, "", "corrupt record", f"{name}: {exc}")
                else:
                    if message is not None:
                        yield message
            elif op == 0x07 and self._pending is not None:
                self._count_index(memoryview(f.read(min(length, 6))))  # channel id, entries' byte length
            pos = body_start + length

    def _chunk(self, f, pos: int, length: int) -> Iterator[RawMessage]:
        where = f"byte {pos}"
        try:
            header = _Cursor(f.read(min(length, 32 + 1024)))
            _start, _end, size, crc = header.unpack(struct.Struct("<QQQI"))
            compression = header.string()
            (compressed_size,) = header.unpack(_U64)
            if compressed_size != length - header.pos:
                raise _Corrupt(f"its sizes disagree ({compressed_size} compressed bytes in a {length}-byte record)")
        except _Corrupt as exc:
            self._chunk_lost(where, "corrupt chunk", str(exc))
            return
        if compression not in DECOMPRESSIONS:
            self._chunk_lost(where, "unknown compression", f"chunk compressed with {compression[:40]!r}, this reader "
                             f"knows {list(DECOMPRESSIONS)}")
            return
        if max(size, compressed_size) > MAX_CHUNK_BYTES:
            self._chunk_lost(where, "oversized chunk", f"declares {size} bytes ({compressed_size} compressed), "
                             f"more than {MAX_CHUNK_BYTES}")
            return
        f.seek(pos + _RECORD.size + header.pos)
        try:
            raw = _decompress(compression, memoryview(f.read(compressed_size)), size)
        except _Corrupt as exc:
            self._chunk_lost(where, "corrupt chunk", str(exc))
            return
        if crc and crc32(raw) != crc:
            self._chunk_lost(where, "corrupt chunk", "its CRC does not match its content")
            return
        messages: list[RawMessage] = []
        cursor = _Cursor(raw)
        try:
            while cursor.left:
                inner = cursor.pos
                op, record_length = cursor.unpack(_RECORD)
                message = self._record(op, cursor.take(record_length), pos, inner)
                if message is not None:
                    messages.append(message)
        except (_Corrupt, struct.error) as exc:
            self._damage(pos, "", "corrupt chunk", f"record at offset {inner} inside it: {exc}; the rest of the "
                         "chunk is skipped", lost=None)
        messages.sort(key=lambda m: m.log_time)
        yield from messages

    def _record(self, op: int, body: memoryview, pos: int, inner: int | None = None) -> RawMessage | None:
        """A Schema, Channel or Message record (others are ignored); the message, if wanted."""
        if op in (0x03, 0x04):
            self._define(op, body)
            return None
        if op != 0x05:
            return None
        if len(body) < _MESSAGE_HEADER.size:
            raise _Corrupt(f"message record of {len(body)} bytes")
        channel_id, _, log_time, _ = _MESSAGE_HEADER.unpack_from(body)
        where = f"byte {pos}" + (f" (chunk offset {inner})" if inner is not None else "")
        channel = self.channels.get(channel_id)
        if channel is None:
            self.report.add(self.name, where, f"channel {channel_id}", "message of an undefined channel")
            return None
        if self._topics is not None and channel.topic not in self._topics:
            return None
        msgtype = self.schemas.get(channel.schema_id)
        if msgtype is None or channel.encoding != "cdr":
            self.report.add(self.name, where, channel.topic, "message without a usable type",
                            f"schema {channel.schema_id}, encoding {channel.encoding[:20]!r}")
            return None
        data = body[_MESSAGE_HEADER.size:]
        if self.message_compression:
            try:
                data = _decompress_message(data)
            except _Corrupt as exc:
                self.report.add(self.name, where, channel.topic, "undecodable message", str(exc))
                return None
        return RawMessage(channel.topic, log_time, msgtype, bytes(data), self.name, where)

    def _define(self, op: int, body: memoryview) -> None:
        cursor = _Cursor(body)
        if op == 0x03:
            (schema_id,) = cursor.unpack(_U16)
            self.schemas[schema_id] = cursor.string()
            try:  # the definition is optional (only custom types need it): a cut one loses nothing else
                encoding = cursor.string()
                (size,) = cursor.unpack(_U32)
                self.definitions[schema_id] = (encoding, bytes(cursor.take(size)).decode("utf-8", "replace"))
            except (_Corrupt, struct.error):
                pass
            return
        channel_id, schema_id = cursor.unpack(struct.Struct("<HH"))
        topic, encoding = cursor.string(), cursor.string()
        metadata = {}
        (map_size,) = cursor.unpack(_U32)
        pairs = _Cursor(cursor.take(map_size))
        while pairs.left:
            key = pairs.string()
            metadata[key] = pairs.string()
        self.channels[channel_id] = _Channel(topic, schema_id, encoding, metadata)

    # ---- damage bookkeeping

    def _damage(self, pos: int, topic: str, kind: str, detail: str, lost: int | None = 1) -> None:
        self.report.add(self.name, f"byte {pos}", topic, kind, detail, lost)

    def _chunk_lost(self, where: str, kind: str, detail: str) -> None:
        """A chunk is skipped whole; its MessageIndex records, which follow it, say what it held."""
        self._flush_pending()
        self._pending = (where, kind, detail, Counter())

    def _count_index(self, body: memoryview) -> None:
        try:
            cursor = _Cursor(body)
            (channel_id,) = cursor.unpack(_U16)
            (entries,) = cursor.unpack(_U32)
        except _Corrupt:
            return
        channel = self.channels.get(channel_id)
        topic = channel.topic if channel else f"channel {channel_id}"
        if self._topics is None or topic in self._topics:
            self._pending[3][topic] += entries // 16

    def _flush_pending(self) -> None:
        if self._pending is not None:
            where, kind, detail, lost = self._pending
            self._pending = None
            self.report.add(self.name, where, "", kind, detail + "; the chunk is skipped", lost if lost else None)


def _statistics(body: memoryview) -> dict[int, int]:
    cursor = _Cursor(body)
    cursor.take(8 + 2 + 4 + 4 + 4 + 4 + 8 + 8)
    (size,) = cursor.unpack(_U32)
    counts = _Cursor(cursor.take(size))
    out = {}
    while counts.left:
        channel_id, count = counts.unpack(struct.Struct("<HQ"))
        out[channel_id] = count
    return out


def _decompress_message(data: memoryview) -> bytes:
    """rosbag2's per-message zstd compression, bounded like chunks."""
    zstd = _zstd()
    decompressor = zstd.ZstdDecompressor()
    try:
        out = decompressor.decompress(data, max_length=MAX_CHUNK_BYTES + 1)
    except zstd.ZstdError as exc:
        raise _Corrupt(f"zstd: {exc}") from None
    if len(out) > MAX_CHUNK_BYTES or not decompressor.eof:
        raise _Corrupt("compressed message is cut or larger than MAX_CHUNK_BYTES")
    return out


# ------------------------------------------------------------------------------------ bags


@dataclass
class _Layout:
    """Where a bag's messages are: MCAP files read here, or a path for rosbags."""

    mcap_files: list[Path]
    rosbags_path: Path | None
    message_compression: str | None
    qos: dict[str, object]  # topic -> offered_qos_profiles from metadata.yaml


def _layout(path: Path, report: BagReport) -> _Layout:
    if path.is_file():
        if path.suffix == ".mcap":
            return _Layout([path], None, None, {})
        if path.suffix == ".db3":
            return _Layout([], path, None, {})
        raise BagError(f"{path} is neither a rosbag2 folder nor an .mcap or .db3 file")
    if not path.is_dir():
        raise BagError(f"bag {path} does not exist")
    mcap_files = sorted(path.glob("*.mcap"), key=_natural)
    if not mcap_files:  # sqlite3, or file-compressed MCAP: rosbags reads those
        databases = sorted(path.glob("*.db3"), key=_natural)
        if (path / "metadata.yaml").is_file():
            return _Layout([], path, None, {})
        if len(databases) == 1:  # a recording that was never closed: the database alone
            return _Layout([], databases[0], None, {})
        raise BagError(f"{path} holds no metadata.yaml and no single rosbag2 storage file (.mcap, .db3)")
    metadata = _metadata(path, report)
    if metadata is None:  # a recording that was never closed has none
        return _Layout(mcap_files, None, None, {})
    mode = str(metadata.get("compression_mode") or "").lower()
    qos = {}
    for entry in metadata.get("topics_with_message_count") or []:
        try:
            qos[entry["topic_metadata"]["name"]] = entry["topic_metadata"].get("offered_qos_profiles", [])
        except (KeyError, TypeError, AttributeError):
            continue
    if metadata.get("storage_identifier") != "mcap" or mode == "file":
        return _Layout([], path, None, qos)
    names = metadata.get("relative_file_paths") or []
    files = [path / Path(str(name)).name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing or not files:
        raise BagError(f"{path}: metadata.yaml lists {[Path(str(n)).name for n in names][:5]}, "
                       f"missing {missing[:5] or 'all'}")
    return _Layout(files, None, "zstd" if mode == "message" else None, qos)


def _natural(path: Path) -> tuple:
    """rosbag2 names split files bag_0, bag_1, ... bag_10: sort by the number."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _metadata(path: Path, report: BagReport) -> dict | None:
    import yaml

    file = path / "metadata.yaml"
    if not file.is_file():
        return None
    try:
        if file.stat().st_size > MAX_SUMMARY_BYTES:
            raise ValueError("larger than any real metadata.yaml")
        data = yaml.load(file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 10x
        return dict(data["rosbag2_bagfile_information"])
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError) as exc:
        report.add(str(file), "the start", "", "unreadable metadata", f"{type(exc).__name__}: {str(exc)[:200]}; "
                   "the storage files are read without it", lost=0)
        return None


def iter_messages(path: str | os.PathLike, topics=None, report: BagReport | None = None) -> Iterator[RawMessage]:
    """Every readable message of the bag (a rosbag2 folder, or one .mcap / .db3 file), in time
    order; damage is skipped and recorded in `report` (a fresh one when None), see the module
    docstring. Raises BagError when the bag cannot be read at all."""
    report = report if report is not None else BagReport()
    wanted = set(topics) if topics is not None else None
    layout = _layout(Path(path), report)
    if layout.rosbags_path is not None:
        yield from _rosbags_messages(layout.rosbags_path, wanted, report)
    for file in layout.mcap_files:
        mcap = McapFile(file, report, layout.message_compression)
        mcap.read_summary()
        yield from mcap.messages(wanted)


def _rosbags_messages(path: Path, topics: set[str] | None, report: BagReport) -> Iterator[RawMessage]:
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags/sqlite3/yaml errors on outside bytes, of many kinds
        raise BagError(f"{path} cannot be read: {type(exc).__name__}: {str(exc)[:300]}") from None
    count, topic = 0, ""
    try:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        if connections or topics is None:
            for connection, stamp, raw in reader.messages(connections=connections):
                count, topic = count + 1, connection.topic
                yield RawMessage(connection.topic, int(stamp), connection.msgtype, bytes(raw), str(path),
                                 f"message {count}")
    except Exception as exc:  # noqa: BLE001 - see above; what was read so far stays valid
        report.add(str(path), f"message {count + 1}", "", "unreadable storage",
                   f"{type(exc).__name__}: {str(exc)[:200]} (last good message on {topic or 'none'})", lost=None)
    finally:
        reader.close()


def _described(layout: _Layout, report: BagReport) -> Iterator[McapFile]:
    """The layout's MCAP files with their schemas and channels read: from the summary, or for a cut
    recording without one, from its data section."""
    for file in layout.mcap_files:
        mcap = McapFile(file, report)
        mcap.read_summary()
        if not mcap.channels:
            for _ in mcap.messages(set()):
                pass
        yield mcap


def bag_topics(path: str | os.PathLike) -> dict[str, tuple[str, list]]:
    """topic -> (message type, offered QoS profiles), for a bag whose metadata may be damaged."""
    from rosbags.rosbag2.metadata import parse_qos

    quiet = BagReport(log_problems=False)  # the damage is reported when the messages are read
    layout = _layout(Path(path), quiet)
    if layout.rosbags_path is not None:
        from rosbags.rosbag2 import Reader

        try:
            with Reader(layout.rosbags_path) as reader:
                return {c.topic: (c.msgtype, list(getattr(c.ext, "offered_qos_profiles", []) or []))
                        for c in reader.connections}
        except Exception as exc:  # noqa: BLE001 - as in _rosbags_messages
            raise BagError(f"{layout.rosbags_path} cannot be read: {type(exc).__name__}: {str(exc)[:300]}") from None
    out = {}
    for mcap in _described(layout, quiet):
        for channel in mcap.channels.values():
            msgtype = mcap.schemas.get(channel.schema_id)
            if msgtype is None or channel.topic in out:
                continue
            try:
                qos = parse_qos(channel.metadata.get("offered_qos_profiles") or layout.qos.get(channel.topic) or [])
            except Exception:  # noqa: BLE001 - QoS is a convenience: a bad profile means defaults
                qos = []
            out[channel.topic] = (msgtype, qos)
    return out


def bag_definitions(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Message type -> (format, text) of the definitions the bag embeds: MCAP schemas, and the
    per-topic definitions rosbag2 >= 8 keeps in sqlite3 (format "ros2msg" or "ros2idl"), so types
    outside the standard set (event_camera_msgs/EventPacket...) can be read."""
    quiet = BagReport(log_problems=False)
    layout = _layout(Path(path), quiet)
    out = {}
    if layout.rosbags_path is not None:
        from rosbags.interfaces import MessageDefinitionFormat
        from rosbags.rosbag2 import Reader

        formats = {MessageDefinitionFormat.MSG: "ros2msg", MessageDefinitionFormat.IDL: "ros2idl"}
        try:
            with Reader(layout.rosbags_path) as reader:
                for c in reader.connections:
                    msgdef = getattr(c, "msgdef", None)
                    if msgdef is not None and msgdef.format in formats and msgdef.data.strip():
                        out.setdefault(c.msgtype, (formats[msgdef.format], msgdef.data))
        except Exception as exc:  # noqa: BLE001 - as in _rosbags_messages
            raise BagError(f"{layout.rosbags_path} cannot be read: {type(exc).__name__}: {str(exc)[:300]}") from None
    for mcap in _described(layout, quiet):
        for schema_id, (encoding, text) in mcap.definitions.items():
            if text.strip() and schema_id in mcap.schemas:
                out.setdefault(mcap.schemas[schema_id], (encoding, text))
    return out


def message_counts(path: str | os.PathLike) -> Counter:
    """Messages per topic: the summary's statistics when intact, else counted by reading."""
    quiet = BagReport(log_problems=False)
    layout = _layout(Path(path), quiet)
    counts: Counter = Counter()
    if layout.rosbags_path is None:
        for file in layout.mcap_files:
            mcap = McapFile(file, quiet)
            mcap.read_summary()
            if mcap.statistics is None or any(c not in mcap.channels for c in mcap.statistics):
                break
            counts.update({mcap.channels[c].topic: n for c, n in mcap.statistics.items()})
        else:
            return counts
    return Counter(m.topic for m in iter_messages(path, report=quiet))
