"""The agent's msgpack codec for the subset the protocol uses: None, bool, int (64-bit), float, str,
bytes, list/tuple, dict. Output is byte-for-byte what msgpack-python's packb(use_bin_type=True)
gives; periscope decodes the agent's messages with it too."""

from .base import _struct  # agent-part


_pack_double = _struct.Struct(">d").pack
_unpack_double = _struct.Struct(">d").unpack_from
_unpack_float = _struct.Struct(">f").unpack_from
_B = _struct.Struct(">B")
_H = _struct.Struct(">H")
_I = _struct.Struct(">I")
_Q = _struct.Struct(">Q")
_b = _struct.Struct(">b")
_h = _struct.Struct(">h")
_i = _struct.Struct(">i")
_q = _struct.Struct(">q")
_MAX_DEPTH = 64


class EncodeError(ValueError):
    """An object the codec does not encode (wrong type, int out of 64-bit range, too deep)."""


class DecodeError(ValueError):
    """Malformed msgpack bytes."""


class NeedMore(Exception):
    """The buffer ends in the middle of a message; feed more bytes."""


_SHORT = {}
"""Encodings of short strings, by the string: keys, names and file names come back in every
frame. Bounded (``_SHORT_MOST``), emptied when full."""
_SHORT_MOST = 2048


def _map_head(n):
    if n < 16:
        return _B.pack(0x80 | n)
    return b"\xde" + _H.pack(n) if n < 0x10000 else b"\xdf" + _I.pack(n)


def _array_head(n):
    if n < 16:
        return _B.pack(0x90 | n)
    return b"\xdc" + _H.pack(n) if n < 0x10000 else b"\xdd" + _I.pack(n)


def _encode_into(obj, out, depth):
    t = type(obj)
    if t is str:
        known = _SHORT.get(obj)
        if known is not None:
            out += known
            return
        data = obj.encode("utf-8", "backslashreplace")
        n = len(data)
        if n < 32:
            head = _B.pack(0xA0 | n)
        elif n < 0x100:
            head = b"\xd9" + _B.pack(n)
        elif n < 0x10000:
            head = b"\xda" + _H.pack(n)
        elif n < 0x100000000:
            head = b"\xdb" + _I.pack(n)
        else:
            raise EncodeError("str too long")
        if n <= 120:
            if len(_SHORT) >= _SHORT_MOST:
                _SHORT.clear()
            _SHORT[obj] = known = head + data
            out += known
        else:
            out += head
            out += data
    elif t is int:
        if 0 <= obj < 0x80:
            out.append(obj)
        elif -0x20 <= obj < 0:
            out.append(obj & 0xFF)
        elif obj >= 0:
            if obj < 0x100:
                out += b"\xcc" + _B.pack(obj)
            elif obj < 0x10000:
                out += b"\xcd" + _H.pack(obj)
            elif obj < 0x100000000:
                out += b"\xce" + _I.pack(obj)
            elif obj < 0x10000000000000000:
                out += b"\xcf" + _Q.pack(obj)
            else:
                raise EncodeError("int too large")
        else:
            if obj >= -0x80:
                out += b"\xd0" + _b.pack(obj)
            elif obj >= -0x8000:
                out += b"\xd1" + _h.pack(obj)
            elif obj >= -0x80000000:
                out += b"\xd2" + _i.pack(obj)
            elif obj >= -0x8000000000000000:
                out += b"\xd3" + _q.pack(obj)
            else:
                raise EncodeError("int too small")
    elif obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif t is float:
        out += b"\xcb" + _pack_double(obj)
    elif t is dict:
        if depth > _MAX_DEPTH:
            raise EncodeError("nested too deep")
        out += _map_head(len(obj))
        for key, value in obj.items():
            _encode_into(key, out, depth + 1)
            _encode_into(value, out, depth + 1)
    elif t is list or t is tuple:
        if depth > _MAX_DEPTH:
            raise EncodeError("nested too deep")
        out += _array_head(len(obj))
        for item in obj:
            _encode_into(item, out, depth + 1)
    elif t is bytes or t is bytearray:
        n = len(obj)
        if n < 0x100:
            out += b"\xc4" + _B.pack(n)
        elif n < 0x10000:
            out += b"\xc5" + _H.pack(n)
        elif n < 0x100000000:
            out += b"\xc6" + _I.pack(n)
        else:
            raise EncodeError("bytes too long")
        out += obj
    elif t is Encoded:
        out += obj.data
    else:
        raise EncodeError("cannot encode %s" % t.__name__)


class Encoded:
    """Bytes already encoded as one msgpack object, put into a message as they are."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


def encode_around(mapping, key, items, known=None):
    """``(the encoding of mapping with items (a list of Encoded) in place of mapping[key], what
    to pass as known next time)``. ``known`` is that second value from the last call for a
    mapping like this one: while the rest of the mapping is equal, the bytes around ``key`` are
    not encoded again."""
    rest = dict(mapping)
    del rest[key]
    if known is None or known[0] != rest:
        before = bytearray()
        after = bytearray()
        side = before
        before += _map_head(len(mapping))
        for name, value in mapping.items():
            if name == key:
                _encode_into(name, before, 1)
                side = after
                continue
            _encode_into(name, side, 1)
            _encode_into(value, side, 1)
        known = (rest, bytes(before), bytes(after))
    return b"".join([known[1], _array_head(len(items)), *[item.data for item in items], known[2]]), known


def encode(obj):
    """Encode one message (plain data only) as msgpack bytes."""
    out = bytearray()
    _encode_into(obj, out, 0)
    return bytes(out)


_FIXED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}


def _decode_at(buf, pos, depth):
    if pos >= len(buf):
        raise NeedMore()
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA, 0xDB):
        if b <= 0xBF:
            n = b & 0x1F
        else:
            n, pos = _read_len(buf, pos, _FIXED[b])
        end = pos + n
        if end > len(buf):
            raise NeedMore()
        try:
            return bytes(buf[pos:end]).decode("utf-8"), end
        except UnicodeDecodeError:
            raise DecodeError("invalid UTF-8 in str") from None
    if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
        if b <= 0x9F:
            n = b & 0x0F
        else:
            n, pos = _read_len(buf, pos, 2 if b == 0xDC else 4)
        if depth > _MAX_DEPTH:
            raise DecodeError("nested too deep")
        if n > len(buf) - pos:
            raise NeedMore()
        items = []
        for _ in range(n):
            item, pos = _decode_at(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        if b <= 0x8F:
            n = b & 0x0F
        else:
            n, pos = _read_len(buf, pos, 2 if b == 0xDE else 4)
        if depth > _MAX_DEPTH:
            raise DecodeError("nested too deep")
        if 2 * n > len(buf) - pos:
            raise NeedMore()
        result = {}
        for _ in range(n):
            key, pos = _decode_at(buf, pos, depth + 1)
            value, pos = _decode_at(buf, pos, depth + 1)
            if type(key) in (list, dict):
                raise DecodeError("unhashable map key")
            result[key] = value
        return result, pos
    if b == 0xC0:
        return None, pos
    if b == 0xC2:
        return False, pos
    if b == 0xC3:
        return True, pos
    if b in (0xC4, 0xC5, 0xC6):
        n, pos = _read_len(buf, pos, _FIXED[b])
        end = pos + n
        if end > len(buf):
            raise NeedMore()
        return bytes(buf[pos:end]), end
    if b == 0xCA:
        _need(buf, pos, 4)
        return _unpack_float(buf, pos)[0], pos + 4
    if b == 0xCB:
        _need(buf, pos, 8)
        return _unpack_double(buf, pos)[0], pos + 8
    if b in (0xCC, 0xCD, 0xCE, 0xCF):
        size = 1 << (b - 0xCC)
        _need(buf, pos, size)
        return int.from_bytes(buf[pos:pos + size], "big"), pos + size
    if b in (0xD0, 0xD1, 0xD2, 0xD3):
        size = 1 << (b - 0xD0)
        _need(buf, pos, size)
        return int.from_bytes(buf[pos:pos + size], "big", signed=True), pos + size
    raise DecodeError("unsupported msgpack type byte 0x%02x" % b)


def _need(buf, pos, size):
    if pos + size > len(buf):
        raise NeedMore()


def _read_len(buf, pos, size):
    _need(buf, pos, size)
    return int.from_bytes(buf[pos:pos + size], "big"), pos + size


def decode(data):
    """Decode exactly one msgpack object from ``data`` (DecodeError on trailing bytes or garbage)."""
    try:
        obj, pos = _decode_at(data, 0, 0)
    except NeedMore:
        raise DecodeError("truncated msgpack data") from None
    if pos != len(data):
        raise DecodeError("trailing bytes after msgpack object")
    return obj


class StreamDecoder:
    """Incremental decoder: ``feed(bytes)`` then iterate over the complete messages.

    A message larger than ``max_message`` bytes is a DecodeError (the stream is then unusable).
    """

    def __init__(self, max_message=1 << 20):
        self.buffer = bytearray()
        self.max_message = max_message

    def feed(self, data):
        self.buffer += data

    def __iter__(self):
        return self

    def __next__(self):
        if not self.buffer:
            raise StopIteration
        try:
            obj, pos = _decode_at(self.buffer, 0, 0)
        except NeedMore:
            if len(self.buffer) > self.max_message:
                raise DecodeError("message larger than %d bytes" % self.max_message) from None
            raise StopIteration from None
        del self.buffer[:pos]
        return obj
