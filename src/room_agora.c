/*-------------------------------------------------------------------------
 *
 * room_agora.c
 *	  Room provider "agora": AccessToken2 RTC tokens minted in-process.
 *
 * Agora has no call to create a channel: a channel exists once someone
 * joins it with a valid token.  Each match gets the channel
 * "match-<match id>", so a retry or a restart names the same channel, and
 * each user gets uid 1 or 2 in it with a publisher token (join, publish
 * audio, video and data).
 *
 * An AccessToken2 is "007" followed by the standard base64 of the
 * zlib-compressed content: the 32-byte signature, then the signed fields,
 * all integers little-endian and strings prefixed by their 16-bit length.
 * The signature chains HMAC-SHA256: the issue time keys the certificate,
 * the salt keys that result, and the result keys the signed fields.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>
#include <zlib.h>

#include "fmgr.h"
#include "lib/stringinfo.h"

/* PostgreSQL's SQL function json_object clashes with jansson's */
#define json_object pg_sql_json_object
#include "utils/builtins.h"
#undef json_object

#include "matchmaker.h"

#define AGORA_SERVICE_RTC		1
#define AGORA_PRIV_JOIN			1
#define AGORA_PRIV_AUDIO		2
#define AGORA_PRIV_VIDEO		3
#define AGORA_PRIV_DATA			4

static void
put_u16(StringInfo buf, uint16 v)
{
	appendStringInfoChar(buf, (char) (v & 0xff));
	appendStringInfoChar(buf, (char) (v >> 8));
}

static void
put_u32(StringInfo buf, uint32 v)
{
	for (int i = 0; i < 4; i++)
		appendStringInfoChar(buf, (char) ((v >> (8 * i)) & 0xff));
}

static void
put_bytes(StringInfo buf, const char *data, size_t len)
{
	put_u16(buf, (uint16) len);
	appendBinaryStringInfo(buf, data, (int) len);
}

/* True if s is exactly 32 hexadecimal characters, as app ids are. */
static bool
is_hex32(const char *s)
{
	if (strlen(s) != 32)
		return false;
	for (; *s; s++)
		if (!isxdigit((unsigned char) *s))
			return false;
	return true;
}

/*
 * Build an RTC AccessToken2.  privilege_expire and expire are seconds
 * relative to issue_ts.  Returns NULL with *error set when the app id or
 * certificate is not 32 hex characters, or the channel name does not fit
 * the token's 16-bit string length.
 */
char *
mm_agora_token(const char *app_id, const char *certificate,
			   const char *channel, uint32 uid, uint32 issue_ts,
			   uint32 expire, uint32 salt, bool publisher,
			   const char **error)
{
	StringInfoData info;
	StringInfoData content;
	uint8		ts_key[4];
	uint8		salt_key[4];
	uint8		k1[32];
	uint8		k2[32];
	uint8		signature[32];
	char		uidstr[16];
	uLongf		zlen;
	Bytef	   *z;
	char	   *token;

	if (!is_hex32(app_id) || !is_hex32(certificate))
	{
		*error = "the Agora app id and certificate must be 32 hexadecimal characters";
		return NULL;
	}
	if (strlen(channel) > PG_UINT16_MAX)
	{
		*error = "the Agora channel name must be at most 65535 bytes";
		return NULL;
	}

	initStringInfo(&info);
	put_bytes(&info, app_id, strlen(app_id));
	put_u32(&info, issue_ts);
	put_u32(&info, expire);
	put_u32(&info, salt);
	put_u16(&info, 1);			/* one service */
	put_u16(&info, AGORA_SERVICE_RTC);
	/* privileges, keys ascending */
	put_u16(&info, publisher ? 4 : 1);
	put_u16(&info, AGORA_PRIV_JOIN);
	put_u32(&info, expire);
	if (publisher)
	{
		put_u16(&info, AGORA_PRIV_AUDIO);
		put_u32(&info, expire);
		put_u16(&info, AGORA_PRIV_VIDEO);
		put_u32(&info, expire);
		put_u16(&info, AGORA_PRIV_DATA);
		put_u32(&info, expire);
	}
	put_bytes(&info, channel, strlen(channel));
	if (uid == 0)
		uidstr[0] = '\0';		/* any uid */
	else
		snprintf(uidstr, sizeof(uidstr), "%u", uid);
	put_bytes(&info, uidstr, strlen(uidstr));

	for (int i = 0; i < 4; i++)
	{
		ts_key[i] = (uint8) ((issue_ts >> (8 * i)) & 0xff);
		salt_key[i] = (uint8) ((salt >> (8 * i)) & 0xff);
	}
	mm_hmac_sha256(ts_key, 4, certificate, strlen(certificate), k1);
	mm_hmac_sha256(salt_key, 4, (const char *) k1, sizeof(k1), k2);
	mm_hmac_sha256(k2, sizeof(k2), info.data, info.len, signature);

	initStringInfo(&content);
	put_bytes(&content, (const char *) signature, sizeof(signature));
	appendBinaryStringInfo(&content, info.data, info.len);

	zlen = compressBound(content.len);
	z = palloc(zlen);
	if (compress2(z, &zlen, (const Bytef *) content.data, content.len,
				  Z_DEFAULT_COMPRESSION) != Z_OK)
	{
		*error = "zlib compression failed";
		return NULL;
	}
	token = psprintf("007%s", mm_base64(z, zlen, false));
	pfree(z);
	pfree(info.data);
	pfree(content.data);
	return token;
}

PG_FUNCTION_INFO_V1(matchmaker_agora_token);

/*
 * matchmaker.agora_token(app_id, certificate, channel, uid, issue_ts,
 *						  expire, salt, publisher) returns text
 *
 * The token builder with every input given, so that it can be checked
 * against Agora's published test vectors.
 */
Datum
matchmaker_agora_token(PG_FUNCTION_ARGS)
{
	const char *error = NULL;
	char	   *token;
	int64		uid = PG_GETARG_INT64(3);
	int64		issue_ts = PG_GETARG_INT64(4);
	int32		expire = PG_GETARG_INT32(5);
	int64		salt = PG_GETARG_INT64(6);

	if (uid < 0 || uid > PG_UINT32_MAX || issue_ts < 0 ||
		issue_ts > PG_UINT32_MAX || expire < 0 || salt < 0 ||
		salt > PG_UINT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("uid, issue_ts, expire and salt must fit in 32 unsigned bits")));
	token = mm_agora_token(text_to_cstring(PG_GETARG_TEXT_PP(0)),
						   text_to_cstring(PG_GETARG_TEXT_PP(1)),
						   text_to_cstring(PG_GETARG_TEXT_PP(2)),
						   (uint32) uid, (uint32) issue_ts, (uint32) expire,
						   (uint32) salt, PG_GETARG_BOOL(7), &error);
	if (token == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", error)));
	PG_RETURN_TEXT_P(cstring_to_text(token));
}

static void
agora_start(MMRoomJob *job)
{
	const char *error = NULL;
	uint32		now = (uint32) time(NULL);
	char	   *channel = psprintf("match-" INT64_FORMAT, job->match_id);

	job->outcome.retry_after_ms = -1;
	for (int i = 0; i < 2; i++)
	{
		uint32		salt;

		if (!pg_strong_random(&salt, sizeof(salt)))
			salt = (uint32) random();
		job->tokens[i] = mm_agora_token(mm_agora_app_id,
										mm_agora_app_certificate,
										channel, (uint32) (i + 1), now,
										(uint32) mm_room_token_ttl,
										salt, true, &error);
		if (job->tokens[i] == NULL)
		{
			/* a settings problem: retry, in case it gets fixed */
			job->outcome.result = MM_RETRY;
			job->outcome.error = pstrdup(error);
			mm_room_done(job);
			return;
		}
		job->extras[i] = json_pack("{s:s, s:i}", "app_id", mm_agora_app_id,
								   "uid", i + 1);
	}
	job->room = channel;
	job->outcome.result = MM_OK;
	mm_room_done(job);
}

const MMRoomProvider mm_room_agora = {
	.name = "agora",
	.make_plan = NULL,
	.start = agora_start,
	.tick = NULL,
	.reset = NULL,
	.close = NULL,
};
