"""The Lua scripts the Redis backend runs on the server (each one atomic there).

Every script that writes takes a deadline (microseconds of the *server's* clock) as its first
argument and refuses to run past it (``SEQKV_EXPIRED``): a write the client gave up on
(timeout) cannot be applied later, when a stalled server resumes. A put is also idempotent
under its version token: the same put delivered twice (a resend after a broken connection)
is applied once.

The layout (``P`` is the namespace's key prefix, see :func:`seqkv.backends.redis.key_prefix`)::

    P ids          hash   session id -> version token of its live record
    P r:<token>    hash   one record version: container, meta, att, dcrc, mcrc, fmt, updated
    P q            hash   quarantined session id -> token (its record stays under P r:<token>)
    P b:<name>     hash   data, crc, version
    P bn           set    names of the blobs that hold data
    P n:<name>     string a counter (the last number handed out)
"""

from __future__ import annotations

__all__ = ["EXPIRED", "CONFLICT", "SCRIPTS"]

#: The error reply of a write that reached the server after its deadline (not applied).
EXPIRED = "SEQKV_EXPIRED"
#: The error reply of a compare-and-set whose expected value changed (nothing written; retry).
CONFLICT = "SEQKV_CONFLICT"

_PRELUDE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function past_deadline(deadline_us)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(deadline_us)
end
local function write_blob(key, names_key, name, data, crc)
  local version = redis.call('HINCRBY', key, 'version', 1)
  if data then
    redis.call('HSET', key, 'data', data, 'crc', crc)
    redis.call('SADD', names_key, name)
  else
    redis.call('HDEL', key, 'data', 'crc')
    redis.call('SREM', names_key, name)
  end
  return version
end
"""

# KEYS: ids, record key of the new token, blob names set.
# ARGV: deadline, prefix, id, token, container, meta, att, dcrc, mcrc, fmt, updated,
#       then per blob: key, name, data, crc.
_PUT = """
if past_deadline(ARGV[1]) then return redis.error_reply('%(EXPIRED)s') end
local prefix, id, token = ARGV[2], ARGV[3], ARGV[4]
local old = redis.call('HGET', KEYS[1], id)
if old == token then return 0 end
redis.call('HSET', KEYS[2], 'container', ARGV[5], 'meta', ARGV[6], 'att', ARGV[7],
           'dcrc', ARGV[8], 'mcrc', ARGV[9], 'fmt', ARGV[10], 'updated', ARGV[11])
redis.call('HSET', KEYS[1], id, token)
if old then redis.call('DEL', prefix .. 'r:' .. old) end
for i = 12, #ARGV, 4 do write_blob(ARGV[i], KEYS[3], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) end
return 1
"""

# KEYS: ids. ARGV: prefix, id, field names... Returns false, or {token, values...}.
_READ = """
local token = redis.call('HGET', KEYS[1], ARGV[2])
if not token then return false end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local values = redis.call('HMGET', ARGV[1] .. 'r:' .. token, unpack(fields))
table.insert(values, 1, token)
return values
"""

# KEYS: ids. ARGV: prefix, id. Returns false, or {container, meta, att} lengths.
_SIZE = """
local token = redis.call('HGET', KEYS[1], ARGV[2])
if not token then return false end
local key = ARGV[1] .. 'r:' .. token
return {redis.call('HSTRLEN', key, 'container'), redis.call('HSTRLEN', key, 'meta'),
        redis.call('HSTRLEN', key, 'att')}
"""

# KEYS: ids. ARGV: deadline, prefix, id.
_DELETE = """
if past_deadline(ARGV[1]) then return redis.error_reply('%(EXPIRED)s') end
local token = redis.call('HGET', KEYS[1], ARGV[3])
if not token then return 0 end
redis.call('HDEL', KEYS[1], ARGV[3])
redis.call('DEL', ARGV[2] .. 'r:' .. token)
return 1
"""

# KEYS: ids. ARGV: deadline, prefix, id, expected token, expected mcrc, new meta, new mcrc, updated.
_PATCH_META = """
if past_deadline(ARGV[1]) then return redis.error_reply('%(EXPIRED)s') end
local token = redis.call('HGET', KEYS[1], ARGV[3])
if not token then return 0 end
local key = ARGV[2] .. 'r:' .. token
if token ~= ARGV[4] or redis.call('HGET', key, 'mcrc') ~= ARGV[5] then
  return redis.error_reply('%(CONFLICT)s')
end
redis.call('HSET', key, 'meta', ARGV[6], 'mcrc', ARGV[7], 'updated', ARGV[8])
return 1
"""

# KEYS: counter. ARGV: deadline, after.
_ALLOCATE = """
if past_deadline(ARGV[1]) then return redis.error_reply('%(EXPIRED)s') end
local after = tonumber(ARGV[2])
local value = tonumber(redis.call('GET', KEYS[1]) or '0')
if value < after then value = after end
value = value + 1
redis.call('SET', KEYS[1], string.format('%%.0f', value))
return string.format('%%.0f', value)
"""

# KEYS: ids, quarantine hash. ARGV: deadline, prefix, id, reason, time.
_QUARANTINE = """
if past_deadline(ARGV[1]) then return redis.error_reply('%(EXPIRED)s') end
local token = redis.call('HGET', KEYS[1], ARGV[3])
if not token then return 0 end
local previous = redis.call('HGET', KEYS[2], ARGV[3])
if previous then redis.call('DEL', ARGV[2] .. 'r:' .. previous) end
redis.call('HSET', KEYS[2], ARGV[3], token)
redis.call('HDEL', KEYS[1], ARGV[3])
redis.call('HSET', ARGV[2] .. 'r:' .. token, 'reason', ARGV[4], 'quarantined_at', ARGV[5])
return 1
"""

# KEYS: blob key, blob names set. ARGV: deadline, name, expected version ('' = any), data, crc
# (no data argument: delete; then returns 0 when there was nothing to delete).
_WRITE_BLOB = """
if past_deadline(ARGV[1]) then return redis.error_reply('%(EXPIRED)s') end
if ARGV[3] ~= '' and tostring(tonumber(redis.call('HGET', KEYS[1], 'version') or '0')) ~= ARGV[3] then
  return redis.error_reply('%(CONFLICT)s')
end
if not ARGV[4] and redis.call('HEXISTS', KEYS[1], 'data') == 0 then return 0 end
return write_blob(KEYS[1], KEYS[2], ARGV[2], ARGV[4], ARGV[5])
"""

# KEYS: ids, record key of the token. ARGV: deadline, id, token, container, meta, att, dcrc, mcrc, fmt, updated.
# A record of the old key layout, copied as stored (its checksums unchanged) unless the id exists.
_IMPORT_RECORD = """
if past_deadline(ARGV[1]) then return redis.error_reply('%(EXPIRED)s') end
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'container', ARGV[4], 'meta', ARGV[5], 'att', ARGV[6],
           'dcrc', ARGV[7], 'mcrc', ARGV[8], 'fmt', ARGV[9], 'updated', ARGV[10])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

# KEYS: blob key, blob names set. ARGV: deadline, name, data, crc, version. Unless the blob exists.
_IMPORT_BLOB = """
if past_deadline(ARGV[1]) then return redis.error_reply('%(EXPIRED)s') end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'crc', ARGV[4], 'version', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

_NAMES = {"EXPIRED": EXPIRED, "CONFLICT": CONFLICT}

#: name -> Lua source, ready for ``register_script``.
SCRIPTS = {
    name: _PRELUDE + body % _NAMES
    for name, body in {
        "put": _PUT,
        "read": _READ,
        "size": _SIZE,
        "delete": _DELETE,
        "patch_meta": _PATCH_META,
        "allocate": _ALLOCATE,
        "quarantine": _QUARANTINE,
        "write_blob": _WRITE_BLOB,
        "import_record": _IMPORT_RECORD,
        "import_blob": _IMPORT_BLOB,
    }.items()
}
