"""Who owns a job, and writes that only its owner can make.

A worker that takes a job (of any kind) gets a lease: `job:{<id>}:lease` holds its token
(`worker#epoch`) and expires unless renewed. The record's `epoch` field counts how many times
the job changed hands; taking a job (or the reaper taking it back from a dead owner)
increments it, so a token can never be handed out twice.

Every write the owner makes goes through a `Writer`. The `FencedWriter` runs the commands in
one Lua script that first checks that the lease still holds the owner's token: a worker that
was paused, partitioned or presumed dead, and has since been replaced, has its writes
refused (`LeaseLost`) instead of overwriting the new owner's status or checkpoints. The
`DirectWriter` is for writers that own nothing (the API, the reaper).

A command is `(NAME, key, *args)`: one key, in second place (`PUBLISH`'s channel is not a
key). The scripts name every key they touch in `KEYS`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from redis import Redis

from model_trainer.errors import LeaseLost
from model_trainer.store.keys import RECORD_TTL_SEC, job_key, lease_key

# One Redis command, `(NAME, key, *args)`, every argument as text (Lua receives strings either
# way).
Command = tuple[str, ...]


class Writer(Protocol):
    def write(self, commands: Sequence[Command]) -> None:
        """Run `commands` in order, atomically where the implementation can."""
        ...


class DirectWriter:
    """Commands in one MULTI/EXEC pipeline, no ownership check."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def write(self, commands: Sequence[Command]) -> None:
        if not commands:
            return
        pipe = self._redis.pipeline()
        for command in commands:
            pipe.execute_command(*command)
        pipe.execute()


# KEYS[1]: the lease; the rest: the keys the commands touch. ARGV[2]: the commands as
# `[NAME, index of its key in KEYS (0: none), args...]`.
_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local commands = cjson.decode(ARGV[2])
for i = 1, #commands do
  local c = commands[i]
  if c[2] == 0 then
    redis.call(c[1], unpack(c, 3))
  else
    redis.call(c[1], KEYS[c[2]], unpack(c, 3))
  end
end
return 1
"""

# KEYS: the lease, the job's record.
_ACQUIRE = """
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'queued' and status ~= 'running' then return {0, status or ''} end
local holder = redis.call('GET', KEYS[1])
if holder then return {-1, holder} end
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
local token = ARGV[1] .. '#' .. epoch
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {epoch, token}
"""

# Renew our lease. After an outage long enough for it to expire, take it again only if
# nobody took the run in between (the epoch is still ours).
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif (not holder) and redis.call('HGET', KEYS[2], 'epoch') == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return 0
end
return 1
"""


@dataclass(frozen=True)
class Acquired:
    epoch: int
    token: str


@dataclass(frozen=True)
class NotAcquired:
    """The job is owned by someone else (`holder`) or ended (`status`)."""

    holder: str | None
    status: str | None


class Lease:
    """A job's ownership record in Redis; `acquire` once, then `renew` periodically."""

    def __init__(self, redis: Redis, job_id: str, ttl_sec: float) -> None:
        self._redis = redis
        self.job_id = job_id
        self.key = lease_key(job_id)
        self._record = job_key(job_id)
        self.ttl_ms = max(1, int(ttl_sec * 1000))
        self._fenced = redis.register_script(_FENCED)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self.epoch = 0
        self.token = ""

    def acquire(self, worker: str) -> Acquired | NotAcquired:
        """Take the job if it is queued or running and nobody holds it."""
        reply = self._acquire(
            keys=[self.key, self._record],
            args=[worker, self.ttl_ms, RECORD_TTL_SEC],
        )
        code, detail = _pair(reply)
        if code > 0:
            self.epoch, self.token = code, detail
            return Acquired(code, detail)
        if code == 0:
            return NotAcquired(holder=None, status=detail or None)
        return NotAcquired(holder=detail, status=None)

    def renew(self) -> bool:
        """Extend the lease; False when another worker owns the job now."""
        reply = self._renew(
            keys=[self.key, self._record], args=[self.token, self.ttl_ms, str(self.epoch)]
        )
        return bool(reply)

    def writer(self) -> FencedWriter:
        return FencedWriter(self)

    def run_fenced(self, commands: Sequence[Command]) -> bool:
        keys = [self.key]
        encoded: list[list[str | int]] = []
        for name, target, *args in commands:
            if name == "PUBLISH":  # a channel, not a key
                encoded.append([name, 0, target, *args])
                continue
            if target not in keys:
                keys.append(target)
            encoded.append([name, keys.index(target) + 1, *args])
        return bool(self._fenced(keys=keys, args=[self.token, json.dumps(encoded)]))

    def release_command(self) -> Command:
        """Deleting the lease, for the last fenced write of an owner letting the job go."""
        return ("DEL", self.key)


class FencedWriter:
    """Writes that land only while the lease is ours; raises `LeaseLost` otherwise."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease

    def write(self, commands: Sequence[Command]) -> None:
        if commands and not self._lease.run_fenced(commands):
            raise LeaseLost(f"job {self._lease.job_id}: lease {self._lease.token} lost")


def _pair(reply: object) -> tuple[int, str]:
    if not isinstance(reply, list) or len(reply) != 2:
        raise TypeError(f"unexpected lease script reply {reply!r}")
    code, detail = reply
    text = detail.decode() if isinstance(detail, bytes) else str(detail)
    if not isinstance(code, int):
        raise TypeError(f"unexpected lease script code {code!r}")
    return code, text
