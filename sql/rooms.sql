-- Room tokens minted in-process, and the end of a call.

-- Agora's published AccessToken2 vectors
SELECT matchmaker.agora_token('970CA35de60c44645bbae8a215061b33',
	'5CFd2fd1755d40ecb72977518be15d3b', '7d72365eb983485397e3e3f9d460bdda',
	2882341273, 1111111, 600, 1, false)
	= '007eJxTYBBbsMMnKq7p9Hf/HcIX5kce9b518kCiQgSr5Zrp4X1Tu6UUGCzNDZwdjU1TUs0Mkk1MzExMk5ISUy0SjQxNDcwMk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGaZYpJmYGSSkpiVwMRhYWRsYmhkbmxgDCaiTj'
	AS matches_vector_uid;
SELECT matchmaker.agora_token('970CA35de60c44645bbae8a215061b33',
	'5CFd2fd1755d40ecb72977518be15d3b', '7d72365eb983485397e3e3f9d460bdda',
	0, 1111111, 600, 1, false)
	= '007eJxTYLhzZP08Lxa1Pg57+TcXb/3cZ3wi4V6kbpbOog0G2dOYk20UGCzNDZwdjU1TUs0Mkk1MzExMk5ISUy0SjQxNDcwMk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGaZYpJmYGSSkpiQwMADacImo='
	AS matches_vector_any_uid;
-- a publisher token carries more privileges, so it differs
SELECT matchmaker.agora_token('970CA35de60c44645bbae8a215061b33',
	'5CFd2fd1755d40ecb72977518be15d3b', '7d72365eb983485397e3e3f9d460bdda',
	2882341273, 1111111, 600, 1, true) LIKE '007%' AS publisher_token;
SELECT matchmaker.agora_token('not-hex', '5CFd2fd1755d40ecb72977518be15d3b',
	'c', 1, 1, 1, 1, true);
SELECT matchmaker.agora_token('970CA35de60c44645bbae8a215061b33',
	'5CFd2fd1755d40ecb72977518be15d3b', 'c', -1, 1, 1, 1, true);
-- a channel name must fit the token's 16-bit length
SELECT length(matchmaker.agora_token('970CA35de60c44645bbae8a215061b33',
	'5CFd2fd1755d40ecb72977518be15d3b', repeat('c', 65535), 1, 1, 1, 1, true))
	> 0 AS longest_channel;
SELECT matchmaker.agora_token('970CA35de60c44645bbae8a215061b33',
	'5CFd2fd1755d40ecb72977518be15d3b', repeat('c', 65536), 1, 1, 1, 1, true);

-- ending a match marks it once
INSERT INTO matchmaker.matches (mood, intent_ids, user_ids)
VALUES ('happy', '{1,2}', '{a,b}');
SELECT matchmaker.end_match(max(id)) FROM matchmaker.matches;
SELECT matchmaker.end_match(max(id)) FROM matchmaker.matches;
SELECT matchmaker.end_match(-1);
SELECT ended_at IS NOT NULL AS ended FROM matchmaker.matches
ORDER BY id DESC LIMIT 1;
