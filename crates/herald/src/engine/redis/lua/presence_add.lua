-- Adds or refreshes one client's presence in a channel.
--
-- KEYS[1]  expiry set (sorted set: client id -> expiry time in ms, Redis clock)
-- KEYS[2]  data hash (client id -> encoded ClientInfo)
-- ARGV[1]  client id
-- ARGV[2]  encoded ClientInfo
-- ARGV[3]  TTL in milliseconds
local now = redis.call("time")
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call("hset", KEYS[2], ARGV[1], ARGV[2])
redis.call("zadd", KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
-- The keys outlive their newest entry by its TTL, so a channel whose every node died
-- disappears by itself.
redis.call("pexpire", KEYS[1], ARGV[3])
redis.call("pexpire", KEYS[2], ARGV[3])
return 1
