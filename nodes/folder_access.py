"""Which folders Load Dataset may read and Auto Caption may write, on a ComfyUI others can reach.

ComfyUI's own nodes read only from its input folder. On a server that listens beyond this machine
(``--listen`` with an address other than loopback), anyone who can queue a prompt could otherwise point
Load Dataset at any folder (``/home``, ``C:\\Users``) and see its images in the contact sheet, or have Auto
Caption write files there. There, dataset folders are confined to ComfyUI's input folder plus the folders
listed in ``LORA_LAB_ALLOWED_FOLDERS`` (separated by ``os.pathsep``: ':' on Linux and macOS, ';' on
Windows), and links that lead out of them are not followed. On loopback, any folder works, as before.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import folder_paths

from ..trainer_core.data.dataset_folder import inside

ALLOWED_FOLDERS_VARIABLE = "LORA_LAB_ALLOWED_FOLDERS"


def listen_addresses() -> list[str]:
    """The addresses ComfyUI listens on (its ``--listen``; 127.0.0.1 when not given)."""
    try:
        from comfy.cli_args import args
    except ImportError:  # pragma: no cover - ComfyUI always has it
        return ["127.0.0.1"]
    listen = getattr(args, "listen", None) or "127.0.0.1"
    return [address.strip() for address in str(listen).split(",") if address.strip()]


def _is_loopback(address: str) -> bool:
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may be reachable from elsewhere


def confined() -> bool:
    """Whether the server can be reached from other machines, so folders are confined."""
    return not all(_is_loopback(address) for address in listen_addresses())


def allowed_folders() -> list[Path]:
    """ComfyUI's input folder and the folders in LORA_LAB_ALLOWED_FOLDERS, links resolved."""
    folders = [folder_paths.get_input_directory()]
    folders += [part for part in os.environ.get(ALLOWED_FOLDERS_VARIABLE, "").split(os.pathsep) if part.strip()]
    return [Path(os.path.realpath(os.path.expanduser(folder.strip()))) for folder in folders]


def confine_to() -> list[Path]:
    """The folders datasets are read from and written to: none (anywhere) unless the server is confined."""
    return allowed_folders() if confined() else []


def check_dataset_folder(folder: Path, field: str) -> None:
    """Refuse ``folder`` when the server is confined and the folder (its links resolved) is outside the
    allowed folders, with a message that says how to allow it."""
    roots = confine_to()
    if not roots or inside(folder, roots):
        return
    listen = ", ".join(listen_addresses())
    raise PermissionError(
        f"{field}: {folder} is outside the folders LoRA Lab may use on this server. ComfyUI listens beyond this "
        f"machine (--listen {listen}), so datasets are read from and captions written to ComfyUI's input folder "
        f"({roots[0]}) and the folders listed in {ALLOWED_FOLDERS_VARIABLE} only. Put the dataset in the input "
        f"folder and give its name (e.g. 'my_dataset'), or start ComfyUI with {ALLOWED_FOLDERS_VARIABLE} naming "
        f"the folder (several separated by '{os.pathsep}')."
    )
