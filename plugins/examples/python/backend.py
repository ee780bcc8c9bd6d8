"""A cairn storage backend in Python: objects are files below a folder.

Built into a WebAssembly component by componentize-py (see build.sh). componentize-py maps
the WIT world `storage-backend` onto this module: the class `Backend` implements the exported
interface `backend`, and the class `Upload` (which must live in a module named after that
interface, hence this file's name) implements its `upload` resource. Errors are raised as
`Err(<variant>)`; componentize-py turns them into the `error` variant of the result.

Files are reached through the standard library: componentize-py links CPython against
wasi-libc, so `open`, `os.rename` and friends become wasi:filesystem calls the cairn host
allows only inside the folders granted in `repository.grants.dirs`.
"""

import errno
import os
import secrets

import wit_world
from componentize_py_types import Err
from wit_world.exports import backend as backend_api
from wit_world.imports import types as t

VERSION = "0.1.0"

# Unfinished uploads are hidden files beside their final name: `.BASE.cairn-upload-RANDOM`.
UPLOAD_MARKER = ".cairn-upload-"

# Set by `open`; `open` is called exactly once per instance, before anything else.
_root = None


def _error(context, e):
    """The contract's error variant for an OSError, keeping the OS message."""
    msg = f"{context}: {e.strerror or e}"
    if e.errno == errno.ENOENT:
        return Err(t.Error_NotFound(msg))
    if e.errno in (errno.EACCES, errno.EPERM):
        return Err(t.Error_PermissionDenied(msg))
    if e.errno == errno.EEXIST:
        return Err(t.Error_AlreadyExists(msg))
    if e.errno in (errno.EINTR, errno.EAGAIN, errno.ETIMEDOUT):
        return Err(t.Error_Transient(msg))
    return Err(t.Error_Other(msg))


def _check_name(name):
    """Refuses names that could leave the root or collide with temporary files."""
    segments = name.split("/")
    ok = name != "" and all(s != "" and not s.startswith(".") for s in segments)
    ok = ok and all(c.isascii() and (c.isalnum() or c in "._-/") for c in name)
    if not ok:
        raise Err(t.Error_InvalidName(f"{name!r} is not a valid object name"))


def _path_of(name):
    if _root is None:
        raise Err(t.Error_Other("open was not called"))
    _check_name(name)
    return os.path.join(_root, name)


def _make_folders(name):
    """Creates the folders `name` needs, below the root only. Not `os.makedirs`: it walks up
    to `/` first, and inside the sandbox a granted folder's parents do not exist."""
    folder = _root
    for segment in name.split("/")[:-1]:
        folder = os.path.join(folder, segment)
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass


def _walk(rel_dir, prefix, visit):
    """Calls visit(relative name, size) for every regular file below `rel_dir` whose name
    starts with `prefix`, pruning folders that cannot hold such names. A missing folder is
    an empty listing."""
    try:
        entries = list(os.scandir(os.path.join(_root, rel_dir)))
    except FileNotFoundError:
        return
    except OSError as e:
        raise _error(rel_dir or "repository folder", e)
    for entry in entries:
        rel = f"{rel_dir}{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            as_dir = rel + "/"
            if as_dir.startswith(prefix) or prefix.startswith(as_dir):
                _walk(as_dir, prefix, visit)
        elif entry.is_file(follow_symlinks=False) and rel.startswith(prefix):
            visit(rel, entry.stat(follow_symlinks=False).st_size)


def _prefix_dir(prefix):
    """The folder part of a prefix (`data/ab/c` -> `data/ab/`), where a walk can start."""
    return prefix[: prefix.rfind("/") + 1]


class Backend(wit_world.exports.Backend):
    def describe(self):
        path = t.OptionSpec(
            name="path",
            required=True,
            secret=False,
            help="The folder to store the repository in (grant it in repository.grants.dirs)",
            default_value=None,
        )
        return t.PluginInfo(
            name="example-python",
            version=VERSION,
            description="A folder backend written in Python (componentize-py)",
            options=[path],
        )

    def open(self, options):
        global _root
        path = dict(options).get("path")
        if not path:
            raise Err(t.Error_InvalidConfig("option `path` is required"))
        try:
            if not os.path.isdir(path):
                os.stat(path)  # raises the real reason when it is missing or hidden
                raise Err(t.Error_InvalidConfig(f"{path} is not a folder"))
        except OSError as e:
            raise _error(f"repository folder {path}", e)
        _root = path
        return t.Capabilities(
            ranged_reads=True,
            atomic_put=True,
            conditional_put=True,
            max_object_size=None,
            preferred_concurrency=2,
        )

    def list(self, prefix, cursor, max):
        found = []

        def visit(rel, size):
            if not rel.rsplit("/", 1)[-1].startswith("."):
                found.append(t.ObjectInfo(name=rel, size=size))

        if _root is None:
            raise Err(t.Error_Other("open was not called"))
        _walk(_prefix_dir(prefix), prefix, visit)
        found.sort(key=lambda o: o.name)
        # The cursor is the last name of the previous page: stateless, so any instance can
        # continue a listing another instance started.
        if cursor is not None:
            found = [o for o in found if o.name > cursor]
        page = found[: max if max > 0 else 1]
        more = len(found) > len(page)
        return t.ListPage(objects=page, next_cursor=page[-1].name if more else None)

    def stat(self, name):
        try:
            return t.ObjectInfo(name=name, size=os.stat(_path_of(name)).st_size)
        except OSError as e:
            raise _error(name, e)

    def read(self, name, offset, len):
        try:
            with open(_path_of(name), "rb") as f:
                f.seek(offset)
                # A buffered read loops until it has `len` bytes or reaches the end.
                return f.read(len)
        except OSError as e:
            raise _error(name, e)

    def start_upload(self, name, size, if_absent):
        path = _path_of(name)
        parent, base = os.path.split(path)
        try:
            _make_folders(name)
            if if_absent and os.path.lexists(path):
                raise Err(t.Error_AlreadyExists(name))
            tmp = os.path.join(parent, f".{base}{UPLOAD_MARKER}{secrets.token_hex(8)}")
            file = open(tmp, "xb")
        except OSError as e:
            raise _error(name, e)
        return Upload(file, tmp, path, name, size, if_absent)

    def list_incomplete(self, prefix):
        found = []

        def visit(rel, size):
            folder, _, file = rel.rpartition("/")
            if file.startswith(".") and UPLOAD_MARKER in file:
                base = file[1:].split(UPLOAD_MARKER, 1)[0]
                name = f"{folder}/{base}" if folder else base
                if name.startswith(prefix):
                    found.append(t.IncompleteUpload(id=rel, name=name, size=size))

        if _root is None:
            raise Err(t.Error_Other("open was not called"))
        # A temporary name starts with '.', so it cannot match the last segment of `prefix`:
        # walk the folder the prefix names and compare the final names instead.
        folder = _prefix_dir(prefix)
        _walk(folder, folder, visit)
        return found

    def abort_incomplete(self, id):
        segments = id.split("/")
        valid = all(s not in ("", ".", "..") for s in segments)
        valid = valid and segments[-1].startswith(".") and UPLOAD_MARKER in segments[-1]
        if not valid or _root is None:
            raise Err(t.Error_InvalidName(f"{id!r} is not an unfinished upload"))
        try:
            os.remove(os.path.join(_root, id))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _error(id, e)

    def delete(self, names):
        for name in names:
            try:
                os.remove(_path_of(name))
            except FileNotFoundError:
                pass  # deletes are retried: a missing name is already deleted
            except OSError as e:
                raise _error(name, e)


class Upload(backend_api.Upload):
    """An upload: a hidden temporary file, renamed (or hard-linked, for `if-absent`) into
    place by `finish`, so an object is either absent or complete under its final name."""

    def __init__(self, file, tmp, path, name, size, if_absent):
        self.file = file
        self.tmp = tmp
        self.path = path
        self.name = name
        self.size = size
        self.if_absent = if_absent
        self.written = 0

    def write(self, data):
        if self.file is None:
            raise Err(t.Error_Other(f"{self.name}: upload already closed"))
        if self.written + len(data) > self.size:
            raise Err(t.Error_Other(f"{self.name}: more bytes written than the announced {self.size}"))
        try:
            # A buffered file's write stores everything or raises; a raw os.write may store
            # less than asked and return how much it did.
            self.file.write(data)
        except OSError as e:
            raise _error(self.name, e)
        self.written += len(data)

    def finish(self):
        if self.file is None:
            raise Err(t.Error_Other(f"{self.name}: upload already closed"))
        file, self.file = self.file, None
        try:
            self._publish(file)
        except BaseException:
            _remove_quietly(self.tmp)
            raise

    def _publish(self, file):
        try:
            if self.written != self.size:
                raise Err(t.Error_Other(f"{self.name}: {self.written} bytes written, {self.size} announced"))
            file.flush()
            os.fsync(file.fileno())
            file.close()
            if self.if_absent:
                # link() fails if the target exists: an atomic create-if-absent.
                os.link(self.tmp, self.path)
                _remove_quietly(self.tmp)
            else:
                os.rename(self.tmp, self.path)
        except OSError as e:
            raise _error(self.name, e)
        finally:
            file.close()

    def abort(self):
        if self.file is not None:
            file, self.file = self.file, None
            file.close()
            _remove_quietly(self.tmp)


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
