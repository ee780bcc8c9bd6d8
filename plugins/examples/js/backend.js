// A cairn storage backend in JavaScript: objects are files below a folder.
//
// Built into a WebAssembly component by componentize-js (see build.sh) for the world in
// wit/world.wit. The exported interface `backend` is the object of that name below; its
// `upload` resource is the class `Upload`. WIT `u64` values are BigInts, `list<u8>` is a
// Uint8Array, `option<T>` is the value or undefined, and a `result` is returned when ok or
// thrown as an error whose `payload` is the `error` variant (`{ tag, val }`).
//
// JavaScript in a component has no file API of its own, so this file calls wasi:filesystem
// directly: the cairn host preopens each folder granted in `repository.grants.dirs` at its
// absolute path, and every file operation is relative to one of those descriptors.

import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

const VERSION = '0.1.0';

// Unfinished uploads are hidden files beside their final name: `.BASE.cairn-upload-RANDOM`.
const UPLOAD_MARKER = '.cairn-upload-';

// Set by `open`, which is called exactly once per instance before anything else: the
// preopened folder that holds the repository and the repository's path inside it.
let store = null;

/** A failed call: thrown, and turned into the `error` variant of the call's result. */
class BackendError extends Error {
  constructor(tag, val) {
    super(`${tag}: ${typeof val === 'string' ? val : val.message}`);
    this.payload = { tag, val };
  }
}

/** The contract's error for a failed wasi:filesystem call (its payload is an error-code). */
function fsError(context, e) {
  const code = e && e.payload !== undefined ? e.payload : String(e);
  const message = `${context}: ${code}`;
  switch (code) {
    case 'no-entry':
      return new BackendError('not-found', message);
    case 'access':
    case 'not-permitted':
      return new BackendError('permission-denied', message);
    case 'exist':
      return new BackendError('already-exists', message);
    case 'interrupted':
    case 'would-block':
    case 'busy':
      return new BackendError('transient', message);
    default:
      return new BackendError('other', message);
  }
}

/** Runs a wasi:filesystem call, mapping its error to the contract's. */
function fsCall(context, call) {
  try {
    return call();
  } catch (e) {
    if (e instanceof BackendError) throw e;
    throw fsError(context, e);
  }
}

/** Releases a wasi resource now rather than when the garbage collector gets to it. */
function close(resource) {
  const dispose = resource && resource[Symbol.dispose];
  if (dispose) dispose.call(resource);
}

function opened() {
  if (store === null) throw new BackendError('other', 'open was not called');
  return store;
}

/** Refuses names that could leave the root or collide with temporary files. */
function checkName(name) {
  const ok =
    /^[A-Za-z0-9._\/-]+$/.test(name) && name.split('/').every((s) => s !== '' && !s.startsWith('.'));
  if (!ok) throw new BackendError('invalid-name', `${JSON.stringify(name)} is not a valid object name`);
}

/** The path of `name` relative to the preopened folder. */
function pathOf(name) {
  checkName(name);
  return opened().base + name;
}

/** The folder part of a prefix (`data/ab/c` -> `data/ab/`), where a walk can start. */
function prefixDir(prefix) {
  return prefix.slice(0, prefix.lastIndexOf('/') + 1);
}

/**
 * Calls visit(relative name, size) for every regular file below `relDir` whose name starts
 * with `prefix`, pruning folders that cannot hold such names. A missing folder is empty.
 */
function walk(relDir, prefix, visit) {
  const { dir, base } = opened();
  let folder;
  try {
    folder = dir.openAt({}, base + (relDir || '.'), { directory: true }, { read: true });
  } catch (e) {
    if (e && e.payload === 'no-entry') return;
    throw fsError(relDir || 'repository folder', e);
  }
  const entries = [];
  fsCall(relDir || 'repository folder', () => {
    const stream = folder.readDirectory();
    for (let entry; (entry = stream.readDirectoryEntry()) !== undefined; ) entries.push(entry);
    close(stream);
  });
  for (const entry of entries) {
    const rel = relDir + entry.name;
    if (entry.type === 'directory') {
      const asDir = rel + '/';
      if (asDir.startsWith(prefix) || prefix.startsWith(asDir)) walk(asDir, prefix, visit);
    } else if (entry.type === 'regular-file' && rel.startsWith(prefix)) {
      const stat = fsCall(rel, () => folder.statAt({}, entry.name));
      visit(rel, stat.size);
    }
  }
  close(folder);
}

/** Creates the folders `name` needs, below the repository folder only. */
function makeFolders(name) {
  const { dir, base } = opened();
  const segments = name.split('/').slice(0, -1);
  let path = base;
  for (const segment of segments) {
    path += segment;
    try {
      dir.createDirectoryAt(path);
    } catch (e) {
      if (!e || e.payload !== 'exist') throw fsError(name, e);
    }
    path += '/';
  }
}

function randomHex() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * An upload: a hidden temporary file, renamed (or hard-linked, for `if-absent`) into place
 * by `finish`, so an object is either absent or complete under its final name.
 */
class Upload {
  constructor(file, tmp, path, name, size, ifAbsent) {
    this.file = file;
    this.tmp = tmp;
    this.path = path;
    this.name = name;
    this.size = size;
    this.ifAbsent = ifAbsent;
    this.written = 0n;
  }

  write(data) {
    if (this.file === null) throw new BackendError('other', `${this.name}: upload already closed`);
    if (this.written + BigInt(data.length) > this.size) {
      throw new BackendError('other', `${this.name}: more bytes written than the announced ${this.size}`);
    }
    // A descriptor's write may store less than asked and says how much it did: loop.
    let done = 0;
    while (done < data.length) {
      const n = fsCall(this.name, () => this.file.write(data.subarray(done), this.written));
      done += Number(n);
      this.written += n;
    }
  }

  finish() {
    if (this.file === null) throw new BackendError('other', `${this.name}: upload already closed`);
    const file = this.file;
    this.file = null;
    try {
      this.publish(file);
    } catch (e) {
      removeQuietly(this.tmp);
      throw e;
    }
  }

  publish(file) {
    const { dir } = opened();
    try {
      if (this.written !== this.size) {
        throw new BackendError('other', `${this.name}: ${this.written} bytes written, ${this.size} announced`);
      }
      fsCall(this.name, () => file.sync());
    } finally {
      close(file);
    }
    if (this.ifAbsent) {
      // link() fails if the target exists: an atomic create-if-absent.
      fsCall(this.name, () => dir.linkAt({}, this.tmp, dir, this.path));
      removeQuietly(this.tmp);
    } else {
      fsCall(this.name, () => dir.renameAt(this.tmp, dir, this.path));
    }
  }

  abort() {
    if (this.file !== null) {
      close(this.file);
      this.file = null;
      removeQuietly(this.tmp);
    }
  }
}

function removeQuietly(path) {
  try {
    opened().dir.unlinkFileAt(path);
  } catch {
    // Already gone, or never created: nothing to discard.
  }
}

/** Finds the preopened folder that holds `path`: the folder itself or one of its parents. */
function preopenFor(path) {
  const folder = path.replace(/\/+$/, '');
  for (const [dir, preopen] of getDirectories()) {
    const root = preopen.replace(/\/+$/, '');
    if (folder === root) return { dir, base: '' };
    if (folder.startsWith(root + '/')) return { dir, base: folder.slice(root.length + 1) + '/' };
  }
  return null;
}

export const backend = {
  describe() {
    return {
      name: 'example-js',
      version: VERSION,
      description: 'A folder backend written in JavaScript (componentize-js)',
      options: [
        {
          name: 'path',
          required: true,
          secret: false,
          help: 'The folder to store the repository in (grant it in repository.grants.dirs)',
          defaultValue: undefined,
        },
      ],
    };
  },

  open(options) {
    const path = (options.find(([key]) => key === 'path') || [])[1];
    if (!path) throw new BackendError('invalid-config', 'option `path` is required');
    const found = preopenFor(path);
    if (found === null) {
      // Inside the sandbox a folder that is not granted looks exactly like a missing one.
      throw new BackendError('not-found', `repository folder ${path}: not found (is it in repository.grants.dirs?)`);
    }
    const stat = fsCall(`repository folder ${path}`, () => found.dir.statAt({}, found.base || '.'));
    if (stat.type !== 'directory') throw new BackendError('invalid-config', `${path} is not a folder`);
    store = found;
    return {
      rangedReads: true,
      atomicPut: true,
      conditionalPut: true,
      maxObjectSize: undefined,
      preferredConcurrency: 2,
    };
  },

  list(prefix, cursor, max) {
    opened();
    let found = [];
    walk(prefixDir(prefix), prefix, (rel, size) => {
      if (!rel.split('/').pop().startsWith('.')) found.push({ name: rel, size });
    });
    found.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    // The cursor is the last name of the previous page: stateless, so any instance can
    // continue a listing another instance started.
    if (cursor !== undefined && cursor !== null) found = found.filter((o) => o.name > cursor);
    const objects = found.slice(0, Math.max(1, max));
    const more = found.length > objects.length;
    return { objects, nextCursor: more ? objects[objects.length - 1].name : undefined };
  },

  stat(name) {
    const path = pathOf(name);
    const stat = fsCall(name, () => opened().dir.statAt({}, path));
    return { name, size: stat.size };
  },

  read(name, offset, len) {
    const path = pathOf(name);
    const file = fsCall(name, () => opened().dir.openAt({}, path, {}, { read: true }));
    try {
      // A descriptor's read may return fewer bytes than asked before the end: loop.
      const parts = [];
      let got = 0n;
      while (got < len) {
        const [data, end] = fsCall(name, () => file.read(len - got, offset + got));
        parts.push(data);
        got += BigInt(data.length);
        if (end || data.length === 0) break;
      }
      if (parts.length === 1) return parts[0];
      const out = new Uint8Array(Number(got));
      let at = 0;
      for (const part of parts) {
        out.set(part, at);
        at += part.length;
      }
      return out;
    } finally {
      close(file);
    }
  },

  startUpload(name, size, ifAbsent) {
    const path = pathOf(name);
    const { dir } = opened();
    makeFolders(name);
    if (ifAbsent) {
      let exists = true;
      try {
        dir.statAt({}, path);
      } catch (e) {
        if (!e || e.payload !== 'no-entry') throw fsError(name, e);
        exists = false;
      }
      if (exists) throw new BackendError('already-exists', name);
    }
    const slash = path.lastIndexOf('/');
    const tmp = `${path.slice(0, slash + 1)}.${path.slice(slash + 1)}${UPLOAD_MARKER}${randomHex()}`;
    const file = fsCall(name, () =>
      dir.openAt({}, tmp, { create: true, exclusive: true }, { write: true }),
    );
    return new Upload(file, tmp, path, name, size, ifAbsent);
  },

  listIncomplete(prefix) {
    opened();
    const found = [];
    // A temporary name starts with '.', so it cannot match the last segment of `prefix`:
    // walk the folder the prefix names and compare the final names instead.
    const folder = prefixDir(prefix);
    walk(folder, folder, (rel, size) => {
      const slash = rel.lastIndexOf('/');
      const file = rel.slice(slash + 1);
      if (file.startsWith('.') && file.includes(UPLOAD_MARKER)) {
        const name = rel.slice(0, slash + 1) + file.slice(1).split(UPLOAD_MARKER)[0];
        if (name.startsWith(prefix)) found.push({ id: rel, name, size });
      }
    });
    return found;
  },

  abortIncomplete(id) {
    const segments = id.split('/');
    const last = segments[segments.length - 1];
    const valid =
      segments.every((s) => s !== '' && s !== '.' && s !== '..') &&
      last.startsWith('.') &&
      last.includes(UPLOAD_MARKER);
    if (!valid) throw new BackendError('invalid-name', `${JSON.stringify(id)} is not an unfinished upload`);
    const { dir, base } = opened();
    try {
      dir.unlinkFileAt(base + id);
    } catch (e) {
      if (!e || e.payload !== 'no-entry') throw fsError(id, e);
    }
  },

  delete(names) {
    const { dir } = opened();
    for (const name of names) {
      const path = pathOf(name);
      try {
        dir.unlinkFileAt(path);
      } catch (e) {
        // Deletes are retried: a missing name is already deleted.
        if (!e || e.payload !== 'no-entry') throw fsError(name, e);
      }
    }
  },

  Upload,
};
