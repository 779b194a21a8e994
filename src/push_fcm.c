/*-------------------------------------------------------------------------
 *
 * push_fcm.c
 *	  Push provider "fcm": Firebase Cloud Messaging HTTP v1.
 *
 * Sending needs an OAuth 2.0 access token.  The worker gets one by posting
 * an RS256-signed JWT assertion, made with the service account's private
 * key, to the token endpoint, keeps it, and fetches a new one five minutes
 * before it expires.  Pushes that arrive while a token is being fetched
 * wait in a queue.
 *
 * Messages are data messages: every value is a string, Android gets high
 * priority, and iOS gets the APNs headers of a background notification
 * (push type "background" needs priority 5).
 *
 * FCM names its errors in error.details[].errorCode (the entry whose
 * @type is google.firebase.fcm.v1.FcmError), with error.status as the
 * fallback.  UNREGISTERED, SENDER_ID_MISMATCH and INVALID_ARGUMENT mean
 * the push token is dead.  QUOTA_EXCEEDED, UNAVAILABLE and INTERNAL are
 * retried.  A 401 without an FCM code means FCM rejected our access token,
 * so the worker drops it and retries the push with a new one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include <openssl/evp.h>

#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "matchmaker.h"

#define FCM_SCOPE "https://www.googleapis.com/auth/firebase.messaging"
#define FCM_ERROR_TYPE "type.googleapis.com/google.firebase.fcm.v1.FcmError"
#define TOKEN_RENEW_EARLY_S 300

typedef enum TokenState
{
	TOKEN_NONE,
	TOKEN_FETCHING,
	TOKEN_READY
} TokenState;

/* the service account, loaded from matchmaker.fcm_key_file */
typedef struct ServiceAccount
{
	char	   *client_email;
	char	   *key_id;
	EVP_PKEY   *key;
} ServiceAccount;

static ServiceAccount account;
static bool account_loaded = false;

static TokenState state = TOKEN_NONE;
static char *access_token = NULL;	/* in TopMemoryContext */
static TimestampTz token_renew_at = 0;
static int	generation = 0;
static MMPushJob *queue_head = NULL;
static MMPushJob *queue_tail = NULL;
static MemoryContext token_cxt = NULL;

/*
 * Parse a service-account key file.  Returns false with *error set; the
 * error never includes key material.
 */
static bool
parse_key_file(const char *path, ServiceAccount *out, const char **error)
{
	char	   *text;
	json_t	   *root;
	json_error_t jerr;
	const char *email;
	const char *pem;
	const char *kid;

	text = mm_read_secret_file(path, error);
	if (text == NULL)
		return false;
	root = json_loads(text, 0, &jerr);
	memset(text, 0, strlen(text));
	pfree(text);
	if (root == NULL)
	{
		*error = psprintf("key file \"%s\" is not valid JSON (line %d)",
						  path, jerr.line);
		return false;
	}
	if (!mm_json_get_string(root, "client_email", &email, 320) ||
		!mm_json_get_string(root, "private_key", &pem, 16384))
	{
		json_decref(root);
		*error = psprintf("key file \"%s\" lacks \"client_email\" or \"private_key\"",
						  path);
		return false;
	}
	out->key = mm_load_private_key(pem, error);
	if (out->key == NULL || EVP_PKEY_base_id(out->key) != EVP_PKEY_RSA)
	{
		if (out->key)
			EVP_PKEY_free(out->key);
		out->key = NULL;
		json_decref(root);
		*error = psprintf("key file \"%s\" has no RSA private key", path);
		return false;
	}
	out->client_email = MemoryContextStrdup(TopMemoryContext, email);
	out->key_id = mm_json_get_string(root, "private_key_id", &kid, 256) ?
		MemoryContextStrdup(TopMemoryContext, kid) : NULL;
	json_decref(root);
	return true;
}

static void
free_account(ServiceAccount *acc)
{
	if (acc->key)
		EVP_PKEY_free(acc->key);
	if (acc->client_email)
		pfree(acc->client_email);
	if (acc->key_id)
		pfree(acc->key_id);
	memset(acc, 0, sizeof(*acc));
}

/*
 * Check hook for matchmaker.fcm_key_file: a bad file is reported at
 * reload, and the previous setting stays.
 */
bool
mm_check_fcm_key_file(char **newval, void **extra, GucSource source)
{
	ServiceAccount acc = {0};
	const char *error;

	if (*newval == NULL || **newval == '\0')
		return true;
	if (!parse_key_file(*newval, &acc, &error))
	{
		GUC_check_errdetail("%s", error);
		return false;
	}
	free_account(&acc);
	return true;
}

static void
fail_queue(MMResult result, const char *error)
{
	while (queue_head != NULL)
	{
		MMPushJob  *job = queue_head;

		queue_head = job->next;
		job->next = NULL;
		mm_push_end(job, result, error);
	}
	queue_tail = NULL;
}

static void send_message(MMPushJob *job);

static void
flush_queue(void)
{
	while (queue_head != NULL)
	{
		MMPushJob  *job = queue_head;

		queue_head = job->next;
		job->next = NULL;
		send_message(job);
	}
	queue_tail = NULL;
}

/*
 * True if token is visible ASCII only, a superset of RFC 6750's b64token,
 * so that it can go into an Authorization header as it is.  A line break
 * from the token endpoint would otherwise add a header to our requests.
 */
static bool
is_bearer_token(const char *token)
{
	for (; *token != '\0'; token++)
		if ((unsigned char) *token < 0x21 || (unsigned char) *token > 0x7e)
			return false;
	return true;
}

static void
token_answer(const MMHttpResponse *resp, void *arg)
{
	MMOutcome	out;
	json_t	   *root;
	const char *token;
	json_int_t	expires_in;

	if ((intptr_t) arg != generation)
		return;

	mm_http_classify(resp, &out);
	if (out.result != MM_OK)
	{
		state = TOKEN_NONE;
		fail_queue(MM_RETRY, psprintf("FCM token request failed: %s", out.error));
		return;
	}
	root = json_loadb(resp->body, resp->body_len, 0, NULL);
	if (!mm_json_get_string(root, "access_token", &token, 4096) ||
		!is_bearer_token(token))
	{
		json_decref(root);
		state = TOKEN_NONE;
		fail_queue(MM_RETRY, "FCM token response is missing a valid \"access_token\"");
		return;
	}
	expires_in = json_integer_value(json_object_get(root, "expires_in"));
	if (expires_in <= 0)
		expires_in = 3600;

	if (access_token)
		pfree(access_token);
	access_token = MemoryContextStrdup(TopMemoryContext, token);
	json_decref(root);

	/* renew five minutes early, or halfway for short-lived tokens */
	token_renew_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												 (expires_in > 2 * TOKEN_RENEW_EARLY_S ?
												  expires_in - TOKEN_RENEW_EARLY_S :
												  expires_in / 2) * 1000);
	state = TOKEN_READY;
	elog(DEBUG1, "matchmaker: FCM access token valid for %d s",
		 (int) expires_in);
	flush_queue();
}

/* Post a fresh JWT assertion to the token endpoint. */
static void
fetch_token(void)
{
	const char *error = NULL;
	int64		now = (int64) time(NULL);
	json_t	   *header;
	json_t	   *claims;
	char	   *jwt;
	MMHttpSpec	spec = {0};
	MemoryContext oldcxt;

	if (!account_loaded)
	{
		if (mm_fcm_key_file[0] == '\0' || mm_fcm_project_id[0] == '\0')
		{
			fail_queue(MM_RETRY, "matchmaker.fcm_key_file and matchmaker.fcm_project_id must be set");
			return;
		}
		if (!parse_key_file(mm_fcm_key_file, &account, &error))
		{
			fail_queue(MM_RETRY, error);
			return;
		}
		account_loaded = true;
	}

	if (token_cxt == NULL)
		token_cxt = AllocSetContextCreate(mm_job_context, "matchmaker FCM token",
										  ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(token_cxt);
	oldcxt = MemoryContextSwitchTo(token_cxt);

	header = account.key_id ?
		json_pack("{s:s, s:s, s:s}", "alg", "RS256", "typ", "JWT",
				  "kid", account.key_id) :
		json_pack("{s:s, s:s}", "alg", "RS256", "typ", "JWT");
	claims = json_pack("{s:s, s:s, s:s, s:I, s:I}",
					   "iss", account.client_email,
					   "scope", FCM_SCOPE,
					   "aud", mm_fcm_token_url,
					   "iat", (json_int_t) now,
					   "exp", (json_int_t) (now + 3600));
	jwt = mm_jwt_sign(header, claims, account.key, &error);
	if (jwt == NULL)
	{
		MemoryContextSwitchTo(oldcxt);
		fail_queue(MM_RETRY, psprintf("could not sign the FCM assertion: %s", error));
		return;
	}

	spec.url = mm_fcm_token_url;
	spec.content_type = "application/x-www-form-urlencoded";
	spec.body = psprintf("grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Ajwt-bearer&assertion=%s",
						 jwt);
	state = TOKEN_FETCHING;
	mm_http_request(&spec, token_answer, (void *) (intptr_t) generation);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * The FCM error code of a failed send: details[].errorCode of the
 * FcmError entry, else error.status.  NULL when the body has neither.
 */
static const char *
fcm_error_code(json_t *root, const char **message, bool *is_fcm)
{
	json_t	   *err = json_object_get(root, "error");
	json_t	   *details = json_object_get(err, "details");
	size_t		i;
	json_t	   *d;

	*message = json_string_value(json_object_get(err, "message"));
	*is_fcm = false;
	json_array_foreach(details, i, d)
	{
		const char *type = json_string_value(json_object_get(d, "@type"));
		const char *code = json_string_value(json_object_get(d, "errorCode"));

		if (type && code && strcmp(type, FCM_ERROR_TYPE) == 0)
		{
			*is_fcm = true;
			return code;
		}
	}
	return json_string_value(json_object_get(err, "status"));
}

static void
send_answer(const MMHttpResponse *resp, void *arg)
{
	MMPushJob  *job = (MMPushJob *) arg;
	json_t	   *root;
	const char *code;
	const char *message;
	bool		is_fcm;

	mm_http_classify(resp, &job->outcome);
	if (job->outcome.result == MM_OK || resp->curl_code != 0)
	{
		mm_push_done(job);
		return;
	}

	root = json_loadb(resp->body, resp->body_len, 0, NULL);
	code = fcm_error_code(root, &message, &is_fcm);
	if (code != NULL)
	{
		job->outcome.error = psprintf("FCM error %s (HTTP %ld)%s%s",
									  code, resp->status,
									  message ? ": " : "",
									  message ? mm_clip_utf8(message, 200) : "");
		if (strcmp(code, "UNREGISTERED") == 0 ||
			strcmp(code, "SENDER_ID_MISMATCH") == 0 ||
			strcmp(code, "INVALID_ARGUMENT") == 0 ||
			(!is_fcm && strcmp(code, "NOT_FOUND") == 0))
		{
			job->outcome.result = MM_FAIL;
			job->outcome.token_dead = true;
		}
		else if (strcmp(code, "QUOTA_EXCEEDED") == 0 ||
				 strcmp(code, "UNAVAILABLE") == 0 ||
				 strcmp(code, "INTERNAL") == 0 ||
				 strcmp(code, "RESOURCE_EXHAUSTED") == 0)
			job->outcome.result = MM_RETRY;
	}
	if (resp->status == 401 && !is_fcm)
	{
		/* our access token was refused: drop it, retry with a new one */
		if (state == TOKEN_READY)
			state = TOKEN_NONE;
		job->outcome.result = MM_RETRY;
		job->outcome.token_dead = false;
		job->outcome.retry_after_ms = 0;
	}
	json_decref(root);
	mm_push_done(job);
}

/* Convert the outbox data object into FCM's map of strings. */
static json_t *
string_map(json_t *data)
{
	json_t	   *map = json_pack("{}");
	const char *k;
	json_t	   *v;

	json_object_foreach(data, k, v)
	{
		if (json_is_string(v))
			json_object_set(map, k, v);
		else if (json_is_integer(v))
			json_object_set_new(map, k,
								json_string(psprintf("%lld",
													 (long long) json_integer_value(v))));
		else if (!json_is_null(v))
		{
			char	   *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

			json_object_set_new(map, k, json_string(s));
			free(s);
		}
	}
	return map;
}

static void
send_message(MMPushJob *job)
{
	json_t	   *data;
	json_t	   *body;
	char	   *url;
	const char *headers[2];
	MMHttpSpec	spec = {0};

	data = json_loads(job->payload, 0, NULL);
	if (!json_is_object(data))
	{
		json_decref(data);
		mm_push_end(job, MM_FAIL, "outbox payload is not a JSON object");
		return;
	}
	body = json_pack("{s:{s:s, s:o, s:{s:s, s:s}, s:{s:{s:s, s:s}, s:{s:{s:i}}}}}",
					 "message",
					 "token", job->push_token,
					 "data", string_map(data),
					 "android", "priority", "high",
					 "ttl", psprintf("%ds", mm_intent_ttl),
					 "apns", "headers", "apns-priority", "5",
					 "apns-push-type", "background",
					 "payload", "aps", "content-available", 1);
	json_decref(data);
	if (body == NULL)
	{
		mm_push_end(job, MM_FAIL, "push token is not valid UTF-8");
		return;
	}

	url = psprintf("%s/v1/projects/%s/messages:send", mm_fcm_url,
				   mm_fcm_project_id);
	headers[0] = psprintf("Authorization: Bearer %s", access_token);
	headers[1] = NULL;
	spec.url = url;
	spec.body = mm_json_dump(body);
	spec.headers = headers;
	mm_http_request(&spec, send_answer, job);
}

static void
fcm_start(MMPushJob *job)
{
	job->next = NULL;
	if (state == TOKEN_READY &&
		GetCurrentTimestamp() >= token_renew_at)
		state = TOKEN_NONE;

	if (state == TOKEN_READY)
	{
		send_message(job);
		return;
	}
	if (queue_tail)
		queue_tail->next = job;
	else
		queue_head = job;
	queue_tail = job;
	if (state == TOKEN_NONE)
		fetch_token();
}

/* Settings changed: reload the key file and fetch a new token. */
static void
fcm_reset(void)
{
	generation++;
	state = TOKEN_NONE;
	if (account_loaded)
		free_account(&account);
	account_loaded = false;
	fail_queue(MM_RETRY, "push provider settings changed");
}

const MMPushProvider mm_push_fcm = {
	.name = "fcm",
	.start = fcm_start,
	.reset = fcm_reset,
};
