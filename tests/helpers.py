"""Small helpers shared by the tests."""

import struct
import zipfile

import torch


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def inflating(path, claimed=2 * 2**30):
    """A real torch.save file whose zip directory says its data entry inflates to ``claimed`` bytes."""
    torch.save({"w": torch.zeros(2**19)}, path)  # a 2 MiB entry
    data = bytearray(path.read_bytes())
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:  # central directory entries
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        name = bytes(data[pos + 46 : pos + 46 + name_len])
        if name.endswith(b"/data/0"):
            struct.pack_into("<I", data, pos + 24, claimed)  # uncompressed size
        pos += 4
    path.write_bytes(bytes(data))
    assert sum(i.file_size for i in zipfile.ZipFile(path).infolist()) > claimed
    return path
