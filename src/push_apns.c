/*-------------------------------------------------------------------------
 *
 * push_apns.c
 *	  Push provider "apns": Apple Push Notification service, token auth.
 *
 * Each push is POST <apns_url>/3/device/<token> over HTTP/2; libcurl
 * multiplexes concurrent pushes over one connection.  Requests carry an
 * ES256 provider token (a JWT signed with the team's .p8 key).  Apple
 * rejects tokens older than an hour and throttles providers that renew
 * more often than every 20 minutes, so the worker renews its token after
 * 50 minutes.  A 403 ExpiredProviderToken forces an early renewal, once
 * per rejected token however many pushes it failed, and the push is
 * retried.
 *
 * 410 (Unregistered, ExpiredToken) and 400 BadDeviceToken or
 * DeviceTokenNotForTopic mean the device token is dead.  429 and 5xx are
 * retried; other 4xx fail.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "utils/guc.h"
#include "utils/memutils.h"

#include "matchmaker.h"

#define APNS_MAX_PAYLOAD		4096
#define JWT_RENEW_AFTER_S		(50 * 60)

static EVP_PKEY *signing_key = NULL;
static char *provider_token = NULL; /* in TopMemoryContext */
static int64 provider_token_iat = 0;
static int64 provider_token_generation = 0;	/* bumped per new token */

static EVP_PKEY *
load_key(const char *path, const char **error)
{
	char	   *pem = mm_read_secret_file(path, error);
	EVP_PKEY   *key;

	if (pem == NULL)
		return NULL;
	key = mm_load_private_key(pem, error);
	memset(pem, 0, strlen(pem));
	pfree(pem);
	if (key != NULL && EVP_PKEY_base_id(key) != EVP_PKEY_EC)
	{
		EVP_PKEY_free(key);
		key = NULL;
	}
	if (key == NULL)
		*error = psprintf("key file \"%s\" has no P-256 private key", path);
	return key;
}

/*
 * Check hook for matchmaker.apns_key_file: a bad file is reported at
 * reload, and the previous setting stays.
 */
bool
mm_check_apns_key_file(char **newval, void **extra, GucSource source)
{
	const char *error;
	EVP_PKEY   *key;

	if (*newval == NULL || **newval == '\0')
		return true;
	key = load_key(*newval, &error);
	if (key == NULL)
	{
		GUC_check_errdetail("%s", error);
		return false;
	}
	EVP_PKEY_free(key);
	return true;
}

/*
 * Return the current provider token, making a new one when it is older
 * than 50 minutes or when force is set.  Returns NULL with *error set when
 * the settings are incomplete.
 */
static const char *
current_token(bool force, const char **error)
{
	int64		now = (int64) time(NULL);
	int64		age = now - provider_token_iat;
	char	   *jwt;

	if (provider_token != NULL && age < JWT_RENEW_AFTER_S && !force)
		return provider_token;

	if (mm_apns_key_file[0] == '\0' || mm_apns_key_id[0] == '\0' ||
		mm_apns_team_id[0] == '\0' || mm_apns_topic[0] == '\0')
	{
		*error = "matchmaker.apns_key_file, apns_key_id, apns_team_id and apns_topic must be set";
		return NULL;
	}
	if (signing_key == NULL)
	{
		signing_key = load_key(mm_apns_key_file, error);
		if (signing_key == NULL)
			return NULL;
	}
	jwt = mm_jwt_sign(json_pack("{s:s, s:s}", "alg", "ES256",
								"kid", mm_apns_key_id),
					  json_pack("{s:s, s:I}", "iss", mm_apns_team_id,
								"iat", (json_int_t) now),
					  signing_key, error);
	if (jwt == NULL)
		return NULL;
	if (provider_token)
		pfree(provider_token);
	provider_token = MemoryContextStrdup(TopMemoryContext, jwt);
	provider_token_iat = now;
	provider_token_generation++;
	elog(DEBUG1, "matchmaker: new APNs provider token");
	return provider_token;
}

static void
apns_answer(const MMHttpResponse *resp, void *arg)
{
	MMPushJob  *job = (MMPushJob *) arg;
	json_t	   *root;
	const char *reason;

	mm_http_classify(resp, &job->outcome);
	if (job->outcome.result == MM_OK || resp->curl_code != 0)
	{
		mm_push_done(job);
		return;
	}

	root = json_loadb(resp->body, resp->body_len, 0, NULL);
	reason = json_string_value(json_object_get(root, "reason"));
	if (reason != NULL)
	{
		job->outcome.error = psprintf("APNs %ld %s", resp->status,
									  mm_clip_utf8(reason, 100));
		if (resp->status == 410 ||
			(resp->status == 400 &&
			 (strcmp(reason, "BadDeviceToken") == 0 ||
			  strcmp(reason, "DeviceTokenNotForTopic") == 0)))
		{
			job->outcome.result = MM_FAIL;
			job->outcome.token_dead = true;
		}
		else if (resp->status == 403 &&
				 strcmp(reason, "ExpiredProviderToken") == 0)
		{
			const char *error;

			/* renew only if no other push has already done so */
			if (job->credential_stamp == provider_token_generation)
				(void) current_token(true, &error);
			job->outcome.result = MM_RETRY;
			job->outcome.retry_after_ms = 0;
		}
	}
	json_decref(root);
	mm_push_done(job);
}

static const char *
alert_text(const char *type, const char **body)
{
	if (strcmp(type, "match") == 0)
	{
		*body = "Someone in your mood is waiting in a voice room.";
		return "Match found";
	}
	if (strcmp(type, "expired") == 0)
	{
		*body = "Nobody matched your mood this time.";
		return "No match yet";
	}
	*body = "The voice room could not be made. Try again.";
	return "Could not connect";
}

static void
apns_start(MMPushJob *job)
{
	const char *error = NULL;
	const char *token = current_token(false, &error);
	json_t	   *data;
	json_t	   *body;
	char	   *text;
	char	   *escaped;
	const char *title;
	const char *alert_body;
	const char *type;
	const char *headers[7];
	MMHttpSpec	spec = {0};
	json_int_t	intent_id;

	job->outcome.retry_after_ms = -1;
	if (token == NULL)
	{
		job->outcome.result = MM_RETRY;
		job->outcome.error = pstrdup(error);
		mm_push_done(job);
		return;
	}

	data = json_loads(job->payload, 0, NULL);
	type = json_string_value(json_object_get(data, "type"));
	if (!json_is_object(data) || type == NULL)
	{
		json_decref(data);
		job->outcome.result = MM_FAIL;
		job->outcome.error = pstrdup("outbox payload is not a push data object");
		mm_push_done(job);
		return;
	}
	intent_id = json_integer_value(json_object_get(data, "intent_id"));
	title = alert_text(type, &alert_body);
	body = json_pack("{s:{s:{s:s, s:s}, s:s}, s:o}",
					 "aps", "alert", "title", title, "body", alert_body,
					 "sound", "default",
					 "data", data);
	text = mm_json_dump(body);
	if (strlen(text) > APNS_MAX_PAYLOAD)
	{
		job->outcome.result = MM_FAIL;
		job->outcome.error = psprintf("APNs payload is %zu bytes; the limit is %d",
									  strlen(text), APNS_MAX_PAYLOAD);
		mm_push_done(job);
		return;
	}

	escaped = curl_easy_escape(NULL, job->push_token, 0);
	spec.url = psprintf("%s/3/device/%s", mm_apns_url, escaped ? escaped : "");
	curl_free(escaped);

	job->credential_stamp = provider_token_generation;
	headers[0] = psprintf("authorization: bearer %s", token);
	headers[1] = psprintf("apns-topic: %s", mm_apns_topic);
	headers[2] = "apns-push-type: alert";
	headers[3] = "apns-priority: 10";
	headers[4] = psprintf("apns-expiration: %lld",
						  (long long) time(NULL) + mm_intent_ttl);
	headers[5] = psprintf("apns-collapse-id: matchmaker-%lld",
						  (long long) intent_id);
	headers[6] = NULL;
	spec.body = text;
	spec.headers = headers;
	spec.http2 = true;
	mm_http_request(&spec, apns_answer, job);
}

/* Settings changed: reload the key and sign a new token on next use. */
static void
apns_reset(void)
{
	if (signing_key)
		EVP_PKEY_free(signing_key);
	signing_key = NULL;
	if (provider_token)
		pfree(provider_token);
	provider_token = NULL;
	provider_token_iat = 0;
}

const MMPushProvider mm_push_apns = {
	.name = "apns",
	.start = apns_start,
	.reset = apns_reset,
};
