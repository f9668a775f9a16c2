"""File transfer over SFTP (``agent-swarm cp``): directories with -r, progress, no partial file.

Every file is written under a temporary name in its destination directory and renamed into
place when complete, on the guest (SFTP posix-rename) as on the host.

The guest is untrusted: its SFTP server can send any name, mode, size or amount of data.
Downloads therefore

* accept only plain file names from a listing (one path component: no ``/``, NUL or control
  character, not empty, at most 255 bytes of UTF-8) and stop at the first other one; the
  ``.`` and ``..`` entries every server lists are ignored;
* write only through directory file descriptors: directories are entered with
  ``O_DIRECTORY|O_NOFOLLOW``, files created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a temporary
  name and renamed within the same directory, so no symlink in the destination is followed,
  whoever placed it there. Symlinks and special files in the guest are skipped with a notice,
  never recreated;
* keep only permission bits (``mode & 0o777``: never setuid, setgid or sticky), minus the
  user's umask unless ``preserve``;
* stop at :data:`MAX_ENTRIES` entries, :data:`MAX_DEPTH` levels, before the destination's
  free space falls under :data:`MIN_FREE` and past ``max_size`` bytes; a file that sends more
  (or less) than the size it announced is not kept;
* parse the guest's replies with bounds checks of their own (see
  :class:`~agent_swarm.ssh.transfer.wire._Wire`).

Uploads copy symlinks as symlinks (or follow them with ``dereference``, each real directory
once), and skip fifos, sockets and devices with a notice.

The package: :mod:`.common` (the limits, and checks of names, modes and messages),
:mod:`.wire` (the bounds-checked SFTP requests and replies), :mod:`.downloads` and
:mod:`.uploads` (plural, so that the modules are not shadowed by the functions
``download`` and ``upload`` re-exported here). Everything callers use is importable from here.
"""

from __future__ import annotations

from agent_swarm.ssh.transfer.common import (
    CHUNK,
    MAX_DEPTH,
    MAX_ENTRIES,
    MIN_FREE,
    NAME_MAX,
    PIPELINE,
    PROGRESS_MIN,
    Progress,
)
from agent_swarm.ssh.transfer.downloads import download
from agent_swarm.ssh.transfer.uploads import upload

__all__ = [
    "CHUNK",
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MIN_FREE",
    "NAME_MAX",
    "PIPELINE",
    "PROGRESS_MIN",
    "Progress",
    "download",
    "upload",
]
