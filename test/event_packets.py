"""EventPacket payloads built from the formats' documentation, the way the drivers emit them.

Used by the decoder tests: each builder takes known events and returns packets (bytes), so the
decoded values can be compared with what went in. The words follow event_camera_codecs' format
descriptions (evt3: Prophesee's EVT 3.0 as metavision_driver forwards it; libcaer_cmp: what
libcaer_driver's compressor writes; libcaer: libcaer's polarity event struct).
"""

from __future__ import annotations

import numpy as np

EVT3 = {"ADDR_Y": 0, "ADDR_X": 2, "VECT_BASE_X": 3, "VECT_12": 4, "VECT_8": 5, "TIME_LOW": 6,
        "CONTINUED_4": 7, "TIME_HIGH": 8, "EXT_TRIGGER": 10, "OTHERS": 14, "CONTINUED_12": 15}
CMP = {"TIME_HIGH": 0, "TIME_LOW": 1, "ADDR_X": 2, "ADDR_Y": 3, "VECT_BASE_Y": 4, "VECT_8": 5}


def word(code: int, payload: int) -> int:
    return (code << 12) | (payload & 0xFFF)


def random_events(n: int, width: int, height: int, t0_us: int, span_us: int, seed: int = 0,
                  dense_rows: bool = True) -> dict[str, np.ndarray]:
    """Events sorted by time; with `dense_rows` many share a time and row with nearby x (what
    EVT3's vector words and libcaer_cmp's VECT_8 compress)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(t0_us, t0_us + span_us, n))
    y = rng.integers(0, height, n)
    x = rng.integers(0, width, n)
    if dense_rows:  # every third event repeats its predecessor's time and row, a few pixels on
        repeat = np.arange(n) % 3 != 0
        for i in np.flatnonzero(repeat):
            t[i], y[i], x[i] = t[i - 1], y[i - 1], min(width - 1, x[i - 1] + rng.integers(1, 5))
    p = rng.integers(0, 2, n)
    # Unique (t, y, x, p) and in the order a sensor reads them out: time, row, polarity, column.
    keys = np.unique(np.stack([t, y, p, x], 1), axis=0)
    return {"t_us": keys[:, 0], "y": keys[:, 1], "p": keys[:, 2], "x": keys[:, 3]}


def evt3_words(events: dict[str, np.ndarray], vectors: bool = True, extras: bool = True) -> np.ndarray:
    """EVT3 words for events sorted by (t, y, p, x): TIME_HIGH / TIME_LOW when the 24-bit time
    changes, ADDR_Y when the row does, then ADDR_X per event, or VECT_BASE_X followed by VECT_12 /
    VECT_8 words for runs of one row, time and polarity. `extras` sprinkles EXT_TRIGGER, OTHERS
    and CONTINUED words, which carry no pixel events."""
    out: list[int] = []
    high = low = row = None
    t, y, p, x = (events[k] for k in ("t_us", "y", "p", "x"))
    i, n, toggle = 0, len(t), 0
    while i < n:
        time24 = int(t[i]) & ((1 << 24) - 1)
        if time24 >> 12 != high:
            high = time24 >> 12
            out.append(word(EVT3["TIME_HIGH"], high))
            if extras and len(out) % 7 == 0:
                out += [word(EVT3["OTHERS"], 0x0FE), word(EVT3["CONTINUED_12"], 0x123), word(EVT3["CONTINUED_4"], 5)]
        if time24 & 0xFFF != low:
            low = time24 & 0xFFF
            out.append(word(EVT3["TIME_LOW"], low))
            if extras and len(out) % 11 == 0:
                out.append(word(EVT3["EXT_TRIGGER"], (3 << 8) | 1))
        if y[i] != row:
            row = int(y[i])
            out.append(word(EVT3["ADDR_Y"], row))
        j = i
        while j < n and t[j] == t[i] and y[j] == y[i] and p[j] == p[i]:
            j += 1
        xs = x[i:j]
        if vectors and len(xs) > 1:
            base = int(xs[0])
            out.append(word(EVT3["VECT_BASE_X"], base | (int(p[i]) << 11)))
            while base <= xs[-1]:
                size = 12 if toggle % 2 == 0 else 8
                toggle += 1
                inside = xs[(xs >= base) & (xs < base + size)] - base
                mask = int(np.bitwise_or.reduce(1 << inside)) if inside.size else 0
                out.append(word(EVT3["VECT_12" if size == 12 else "VECT_8"], mask))
                base += size
        else:
            out += [word(EVT3["ADDR_X"], int(v) | (int(p[i]) << 11)) for v in xs]
        i = j
    return np.asarray(out, np.uint16)


def libcaer_cmp_packet(events: dict[str, np.ndarray], time_base_us: int) -> np.ndarray:
    """One libcaer_cmp message for events sorted by (t, x, p, y), as libcaer_driver compresses a
    polarity packet: times in us after the message's first packet (`time_base_us`), ADDR_X on a
    new column, and per run of one time, column and polarity either ADDR_Y (a single event) or
    VECT_BASE_Y (8-aligned) + VECT_8 (one bit per row of the block)."""
    out: list[int] = []
    t, x, p, y = (events[k] for k in ("t_us", "x", "p", "y"))
    high, low, column = 0, 0, None
    i, n = 0, len(t)
    while i < n:
        dt = int(t[i]) - time_base_us
        if (dt >> 12) & 0xFFF != high:
            high = (dt >> 12) & 0xFFF
            out.append(word(CMP["TIME_HIGH"], high))
        if dt & 0xFFF != low:
            low = dt & 0xFFF
            out.append(word(CMP["TIME_LOW"], low))
        if x[i] != column:
            column = int(x[i])
            out.append(word(CMP["ADDR_X"], column))
        j = i
        while j < n and t[j] == t[i] and x[j] == x[i] and p[j] == p[i] and y[j] >> 3 == y[i] >> 3:
            j += 1
        rows = y[i:j]
        if len(rows) == 1:
            out.append(word(CMP["ADDR_Y"], int(rows[0]) | (int(p[i]) << 11)))
        else:
            out.append(word(CMP["VECT_BASE_Y"], (int(rows[0]) & ~7) | (int(p[i]) << 11)))
            out.append(word(CMP["VECT_8"], int(np.bitwise_or.reduce(1 << (rows & 7)))))
        i = j
    return np.asarray(out, np.uint16)


def libcaer_packet(events: dict[str, np.ndarray], base_us: int) -> np.ndarray:
    """libcaer polarity events: uint32 (x << 17 | y << 2 | polarity << 1 | valid), int32 timestamp
    in us, the low 31 bits of the sensor time after `base_us` (the message's time_base)."""
    data = (events["x"].astype(np.uint32) << 17) | (events["y"].astype(np.uint32) << 2) \
        | (events["p"].astype(np.uint32) << 1) | np.uint32(1)
    stamp = ((events["t_us"] - base_us) & ((1 << 31) - 1)).astype(np.int32)
    return np.rec.fromarrays([data, stamp], dtype=[("data", "<u4"), ("t", "<i4")]).tobytes()
