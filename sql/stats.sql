-- What operators see.
SELECT kind, key, status, count FROM matchmaker.stats
ORDER BY kind, key, status;
SELECT mood, waiting, oldest_wait > '0'::interval AS has_wait
FROM matchmaker.waiting ORDER BY mood;
