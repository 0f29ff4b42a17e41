//! The Lua scripts the store runs: each one write, atomic in Redis. Those that change agent state
//! check the shard's epoch first (fencing); those of admin changes add the audit entry too.

use redis::Script;
use std::sync::LazyLock;

const NOW_MS: &str = "local t = redis.call('TIME')\n\
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "if redis.call('EXISTS', KEYS[1]) == 1 then return '0' end\n{NOW_MS}\
         local e = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now)\n\
         local es = string.format('%d', e)\n\
         redis.call('SET', KEYS[2], es)\n\
         redis.call('SET', KEYS[1], ARGV[1] .. '/' .. es, 'PX', ARGV[2])\n\
         return es"
    ))
});

pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then\n\
           return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n\
         end\n\
         return 0",
    )
});

pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then\n\
           return redis.call('DEL', KEYS[1])\n\
         end\n\
         return 0",
    )
});

/// The audit entry written with a change: `XADD` to the stream, trimmed by age, when the entry's
/// JSON (argument `json`) is not empty. Keys and arguments are named by the caller's numbering.
fn audit_lua(key: &str, horizon: &str, json: &str) -> String {
    format!(
        "if {json} ~= '' then redis.call('XADD', {key}, 'MINID', '~', {horizon}, '*', 'e', {json}) end\n"
    )
}

/// A deadline change: arm (ZADD at `at`), clear (ZREM) or keep, of member `uid` in zset `key`.
fn deadline_lua(key: &str, mode: &str, at: &str, uid: &str) -> String {
    format!(
        "if {mode} == 'arm' then redis.call('ZADD', {key}, {at}, {uid})\n\
         elseif {mode} == 'clear' then redis.call('ZREM', {key}, {uid}) end\n"
    )
}

/// Adds `sign` (1 or -1) to each counter named in `names` (space-separated) of hash `key`.
fn tally_lua(key: &str, names: &str, sign: &str) -> String {
    format!(
        "for n in string.gmatch({names}, '%S+') do redis.call('HINCRBY', {key}, n, {sign}) end\n"
    )
}

/// The effective config a record names moves from `old` (its SHA-256 in hex, '' for none) to
/// `new`: references counted in hash `refs`, a body (key `prefix` .. sha) removed with its last
/// reference.
fn effective_refs_lua(refs: &str, prefix: &str, old: &str, new: &str) -> String {
    format!(
        "if {new} ~= {old} then\n\
           if {new} ~= '' then redis.call('HINCRBY', {refs}, {new}, 1) end\n\
           if {old} ~= '' and redis.call('HINCRBY', {refs}, {old}, -1) <= 0 then\n\
             redis.call('HDEL', {refs}, {old})\n\
             redis.call('DEL', {prefix} .. {old})\n\
           end\n\
         end\n"
    )
}

/// The whole record (a touch since the last one is part of it now), and the shard's counts
/// (KEYS[6]) moved from the record's old tally (field c) to its new one (ARGV[8]). A shard's
/// counts are complete (field v) from its first record on, or once counted (RECOUNT). An
/// effective config kept apart (ARGV[9]: its SHA-256 in hex, field h of the record) is stored
/// under ARGV[11] .. sha unless it is there; without its body (ARGV[10]) the script stops with
/// NEEDBODY before writing anything, and the caller sends it again with the body. The record's
/// description and health kept apart (fields d, k): ARGV[12] and ARGV[14] say '+' (written from
/// ARGV[13], ARGV[15]), '=' (left as they are) or '-' (removed: ARGV[2] has it, or it has none).
pub(super) static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end\n\
         local oldh = redis.call('HGET', KEYS[2], 'h') or ''\n\
         if ARGV[9] ~= '' and ARGV[9] ~= oldh and redis.call('EXISTS', ARGV[11] .. ARGV[9]) == 0 then\n\
           if ARGV[10] == '' then return redis.error_reply('NEEDBODY') end\n\
           redis.call('SET', ARGV[11] .. ARGV[9], ARGV[10])\n\
         end\n\
         {}redis.call('HSET', KEYS[2], 'h', ARGV[9])\n\
         local old = redis.call('HGET', KEYS[2], 'c') or ''\n\
         if redis.call('SCARD', KEYS[3]) == 0 then redis.call('HSET', KEYS[6], 'v', '1') end\n\
         redis.call('HSET', KEYS[2], 'r', ARGV[2], 'e', ARGV[1], 'c', ARGV[8])\n\
         local gone = {{'t'}}\n\
         for i, f in ipairs({{'d', 'k'}}) do\n\
           local m = ARGV[10 + 2 * i]\n\
           if m == '+' then redis.call('HSET', KEYS[2], f, ARGV[11 + 2 * i])\n\
           elseif m == '-' then table.insert(gone, f) end\n\
         end\n\
         redis.call('HDEL', KEYS[2], unpack(gone))\n\
         redis.call('SADD', KEYS[3], ARGV[3])\n\
         if old ~= ARGV[8] then\n{}{}end\n\
         {}{}return 1",
        effective_refs_lua("KEYS[7]", "ARGV[11]", "oldh", "ARGV[9]"),
        tally_lua("KEYS[6]", "old", "-1"),
        tally_lua("KEYS[6]", "ARGV[8]", "1"),
        deadline_lua("KEYS[4]", "ARGV[4]", "ARGV[5]", "ARGV[3]"),
        audit_lua("KEYS[5]", "ARGV[6]", "ARGV[7]")
    ))
});

/// A shard's counts made again from its records' tallies (KEYS[4..] the agents' keys, ARGV[2..]
/// their tallies, in the same order), and marked complete.
pub(super) static RECOUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end\n\
         redis.call('DEL', KEYS[3])\n\
         for i = 4, #KEYS do\n\
           if redis.call('EXISTS', KEYS[i]) == 1 then\n\
             redis.call('HSET', KEYS[i], 'c', ARGV[i - 2])\n{}\
           end\n\
         end\n\
         redis.call('HSET', KEYS[3], 'v', '1')\n\
         return 1",
        tally_lua("KEYS[3]", "ARGV[i - 2]", "1")
    ))
});

/// Sequence number and last-seen time of an existing record (0 if there is none).
pub(super) static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end\n\
         if redis.call('HEXISTS', KEYS[2], 'r') == 0 then return 0 end\n\
         redis.call('HSET', KEYS[2], 't', ARGV[2], 'e', ARGV[1])\n\
         {}return 1",
        deadline_lua("KEYS[3]", "ARGV[4]", "ARGV[5]", "ARGV[3]")
    ))
});

/// Removes a record, its deadline, its tally from the shard's counts (KEYS[6]) and its
/// reference to an effective config kept apart (KEYS[7], ARGV[5] the bodies' key prefix).
pub(super) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end\n\
         local old = redis.call('HGET', KEYS[2], 'c') or ''\n\
         local oldh = redis.call('HGET', KEYS[2], 'h') or ''\n\
         if redis.call('DEL', KEYS[2]) == 0 then return 0 end\n\
         redis.call('SREM', KEYS[3], ARGV[2])\n\
         redis.call('ZREM', KEYS[4], ARGV[2])\n\
         {}{}{}return 1",
        effective_refs_lua("KEYS[7]", "ARGV[5]", "oldh", "''"),
        tally_lua("KEYS[6]", "old", "-1"),
        audit_lua("KEYS[5]", "ARGV[3]", "ARGV[4]")
    ))
});

pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end\n\
         local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 1000)\n\
         for _, m in ipairs(due) do redis.call('ZADD', KEYS[2], 'XX', ARGV[3], m) end\n\
         local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')\n\
         return {due, first[2] or false}",
    )
});

/// Membership: node ARGV[1] beats (zset KEYS[1]) and names the record layout it reads
/// (ARGV[3], hash KEYS[2]); members silent for ARGV[2] ms are dropped, with their layouts (and
/// any layout of a node no longer a member: an older version drops members without). Returns
/// the members and, in their order, their layouts (false: a version that names none).
pub(super) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}redis.call('ZADD', KEYS[1], now, ARGV[1])\n\
         redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])\n\
         redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))\n\
         for _, n in ipairs(redis.call('HKEYS', KEYS[2])) do\n\
           if not redis.call('ZSCORE', KEYS[1], n) then redis.call('HDEL', KEYS[2], n) end\n\
         end\n\
         local members = redis.call('ZRANGE', KEYS[1], 0, -1)\n\
         return {{members, redis.call('HMGET', KEYS[2], unpack(members))}}"
    ))
});

/// Stores a version (and its audit entry); with ARGV[4] == '1' activates it unless a newer version
/// is active (two concurrent PUTs activate the later version, whichever finishes first).
pub(super) static PUT_CONFIG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])\n\
         {}if ARGV[4] ~= '1' then return 1 end\n\
         local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')\n\
         if tonumber(ARGV[2]) > seen then\n\
           redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n\
           redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])\n\
         end\n\
         return 1",
        audit_lua("KEYS[4]", "ARGV[5]", "ARGV[6]")
    ))
});

/// Stores a version under its own number (ARGV[2]) in place of any of that number, keeps the next
/// number past it, and refreshes the active copy when that version is the active one.
pub(super) static IMPORT_CONFIG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])\n\
         local seq = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')\n\
         if tonumber(ARGV[2]) > seq then redis.call('HSET', KEYS[4], ARGV[1], ARGV[2]) end\n\
         if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then\n\
           redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])\n\
         end\n\
         {}return 1",
        audit_lua("KEYS[5]", "ARGV[4]", "ARGV[5]")
    ))
});

pub(super) static ACTIVATE_CONFIG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local json = redis.call('HGET', KEYS[3], ARGV[2])\n\
         if not json then return false end\n\
         redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n\
         redis.call('HSET', KEYS[2], ARGV[1], json)\n\
         return json",
    )
});

/// Makes no version of a config active (and writes the audit entry); 0 if none was.
pub(super) static DEACTIVATE_CONFIG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end\n\
         redis.call('HDEL', KEYS[1], ARGV[1])\n\
         {}return 1",
        audit_lua("KEYS[3]", "ARGV[2]", "ARGV[3]")
    ))
});

pub(super) static PUT_DOC: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "local rev = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')\n\
         if rev ~= tonumber(ARGV[2]) then return 0 end\n\
         redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])\n\
         redis.call('HSET', KEYS[2], ARGV[1], rev + 1)\n\
         {}return 1",
        audit_lua("KEYS[3]", "ARGV[4]", "ARGV[5]")
    ))
});
