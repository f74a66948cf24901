"""What a file holds, told from its first bytes, and the message for a file that is no checkpoint."""

from __future__ import annotations

import os
import zipfile


def file_kind(path: str | os.PathLike[str]) -> str:
    """What a file holds, from its first bytes (never its name), so a wrong file gets the right message.

    'npz' (a zip of .npy arrays), 'torch-zip' (torch.save's zip), 'zip' (another zip archive),
    'torch-pickle' (torch.save's legacy pickle), 'npy', 'safetensors', 'empty', 'text' or 'binary'.
    A zip archive whose directory cannot be read (a truncated .npz) counts as 'npz'.
    """
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return "npz"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch-zip"
        return "npz" if all(n.endswith(".npy") for n in names) else "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-pickle"
    header_size = int.from_bytes(head[:8], "little")
    if len(head) > 8 and head[8:9] == b"{" and 1 < header_size <= os.path.getsize(path) - 8:
        return "safetensors"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        text = head[: err.start].decode("utf-8") if len(head) - err.start < 4 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "text"
    return "binary"


def not_a_checkpoint(path: str | os.PathLike[str], kind: str) -> str:
    """A one-line 'PATH is not a checkpoint' naming what the file is instead."""
    what = {
        "empty": "it is empty",
        "text": "it is a text file",
        "zip": "it is a zip archive of something else",
        "npy": "it holds a single .npy array, not an .npz archive",
        "binary": "its content is none of the checkpoint formats",
    }.get(kind, f"it is a {kind} file")
    if kind == "text":
        with open(path, "rb") as f:
            first = f.read(200).decode("utf-8", "replace").strip().splitlines()
        if first:
            what += f" starting {first[0][:60]!r}"
    return (
        f"{os.fspath(path)!r} is not a checkpoint: {what}. pvt_np reads training checkpoints "
        "(last.npz / best.npz of a run), weights files (.npz, .safetensors) and PyTorch .pth files"
    )
