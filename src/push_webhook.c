/*-------------------------------------------------------------------------
 *
 * push_webhook.c
 *	  Push provider "webhook": POST each notification to push_url.
 *
 * Body {"to": "<push token>", "data": {...}}; the webhook-id header
 * carries the outbox id, the same on every retry, so that a receiver can
 * drop a delivery it has already seen.
 *
 * With matchmaker.webhook_secret set, each attempt is signed as Standard
 * Webhooks v1 describes: webhook-timestamp is the attempt's Unix time,
 * and webhook-signature is "v1," and the base64 HMAC-SHA256, keyed with
 * the decoded secret, of "<webhook-id>.<webhook-timestamp>.<body>".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "fmgr.h"
#include "utils/guc.h"

/* PostgreSQL's SQL function json_object clashes with jansson's */
#define json_object pg_sql_json_object
#include "utils/builtins.h"
#undef json_object

#include "matchmaker.h"

#define WEBHOOK_SECRET_PREFIX "whsec_"
#define WEBHOOK_KEY_MAX 64

PG_FUNCTION_INFO_V1(matchmaker_webhook_signature);

/*
 * Decode a whsec_ secret into key.  Returns the key length, or -1 when
 * the secret is not a whsec_ prefix followed by 24 to 64 bytes in base64.
 */
static int
decode_secret(const char *secret, uint8 *key)
{
	int			len;

	if (strncmp(secret, WEBHOOK_SECRET_PREFIX,
				strlen(WEBHOOK_SECRET_PREFIX)) != 0)
		return -1;
	len = mm_base64_decode(secret + strlen(WEBHOOK_SECRET_PREFIX), key,
						   WEBHOOK_KEY_MAX);
	if (len < 24)
		return -1;
	return len;
}

/* Return the "v1,<base64>" signature of one delivery. */
static char *
sign(const uint8 *key, int keylen, const char *id, int64 timestamp,
	 const char *body)
{
	char	   *msg = psprintf("%s." INT64_FORMAT ".%s", id, timestamp, body);
	uint8		mac[32];

	mm_hmac_sha256(key, keylen, msg, strlen(msg), mac);
	pfree(msg);
	return psprintf("v1,%s", mm_base64(mac, sizeof(mac), false));
}

/*
 * Check hook for matchmaker.webhook_secret.  It accepts every value:
 * rejecting one would make the server print it in the error, and the
 * value is the secret.  A malformed secret is reported, without its
 * value, by each delivery that needs it.
 */
bool
mm_check_webhook_secret(char **newval, void **extra, GucSource source)
{
	return true;
}

static void
webhook_answer(const MMHttpResponse *resp, void *arg)
{
	MMPushJob  *job = (MMPushJob *) arg;

	mm_http_classify(resp, &job->outcome);
	mm_push_done(job);
}

static void
webhook_start(MMPushJob *job)
{
	json_t	   *data;
	json_t	   *body;
	json_error_t jerr;
	char	   *text;
	char	   *id;
	const char *headers[4];
	uint8		key[WEBHOOK_KEY_MAX];
	int			keylen;

	data = json_loads(job->payload, 0, &jerr);
	if (data == NULL)
	{
		job->outcome.result = MM_FAIL;
		job->outcome.error = psprintf("outbox payload is not valid JSON: %s",
									  jerr.text);
		job->outcome.retry_after_ms = -1;
		mm_push_done(job);
		return;
	}
	body = json_pack("{s:s, s:o}", "to", job->push_token, "data", data);
	if (body == NULL)
	{
		mm_push_end(job, MM_FAIL, "push token is not valid UTF-8");
		return;
	}
	text = mm_json_dump(body);

	id = psprintf(INT64_FORMAT, job->outbox_id);
	headers[0] = psprintf("webhook-id: %s", id);
	headers[1] = NULL;
	keylen = mm_webhook_secret[0] ? decode_secret(mm_webhook_secret, key) : 0;
	if (keylen < 0)
	{
		/* do not send unsigned what the receiver expects signed */
		mm_push_end(job, MM_RETRY, "matchmaker.webhook_secret is malformed: it must be \"whsec_\" followed by 24 to 64 bytes in base64");
		return;
	}
	if (keylen > 0)
	{
		int64		now = (int64) time(NULL);

		headers[1] = psprintf("webhook-timestamp: " INT64_FORMAT, now);
		headers[2] = psprintf("webhook-signature: %s",
							  sign(key, keylen, id, now, text));
		headers[3] = NULL;
	}
	mm_http_post(mm_push_url, text, headers, webhook_answer, job);
}

/*
 * matchmaker.webhook_signature(secret, id, timestamp, body) returns text
 *
 * The signature the webhook provider sends for one delivery, so that the
 * signing can be checked against published test vectors and receivers.
 */
Datum
matchmaker_webhook_signature(PG_FUNCTION_ARGS)
{
	char	   *secret = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *id = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		timestamp = PG_GETARG_INT64(2);
	char	   *body = text_to_cstring(PG_GETARG_TEXT_PP(3));
	uint8		key[WEBHOOK_KEY_MAX];
	int			keylen = decode_secret(secret, key);

	if (keylen < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid webhook secret"),
				 errdetail("The secret must be \"whsec_\" followed by 24 to 64 bytes in base64.")));
	PG_RETURN_TEXT_P(cstring_to_text(sign(key, keylen, id, timestamp, body)));
}

const MMPushProvider mm_push_webhook = {
	.name = "webhook",
	.start = webhook_start,
	.reset = NULL,
};
