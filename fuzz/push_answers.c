/*-------------------------------------------------------------------------
 *
 * push_answers.c
 *	  Fuzz target: the responses of the push services: FCM's OAuth token
 *	  endpoint and its send errors, APNs error reasons, and the webhook
 *	  receiver's status.
 *
 * Input chunks (see harness.h): a first chunk of two lines, the provider
 * ("fcm", "apns" or "webhook") and the push token; then the responses.
 * For FCM the first response is for the token request and the second for
 * the send.  The other providers make one request.
 *
 * Besides well-formed outcomes (harness.c), the FCM token request must be
 * a form post of a signed assertion.  The send must carry the access
 * token the endpoint returned, and no header may contain a line break,
 * whatever the endpoint sent.  The APNs request path must decode back to
 * the push token, with an ES256 provider token.  A push ends exactly
 * once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "utils/memutils.h"

#include "harness.h"

#define CLIENT_EMAIL "matchmaker@demo-project.iam.gserviceaccount.com"
#define PAYLOAD "{\"type\": \"match\", \"intent_id\": 7, \"match_id\": 3, " \
	"\"mood\": \"happy\", \"room\": \"match-3\", \"token\": \"join-token\"}"

typedef struct PushInput
{
	FuzzChunk	chunks[FUZZ_MAX_CHUNKS];
	int			nchunks;
	MMPushJob  *job;
} PushInput;

/* Write the service account and the APNs key once per process. */
static void
setup_keys(void)
{
	static bool done = false;
	json_t	   *account;

	if (done)
		return;
	done = true;
	fuzz_init();
	account = json_pack("{s:s, s:s, s:s, s:s}",
						"type", "service_account",
						"client_email", CLIENT_EMAIL,
						"private_key_id", "0123456789abcdef",
						"private_key", fuzz_pem_private_key(true));
	mm_fcm_key_file = fuzz_write_key_file("service-account.json",
										  mm_json_dump(account));
	mm_apns_key_file = fuzz_write_key_file("apns.p8",
										   fuzz_pem_private_key(false));
}

/* The OAuth request: a form post of an RS256 assertion for our account. */
static void
check_token_request(FuzzRequest *req)
{
	static const char prefix[] =
		"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";
	json_t	   *header;
	json_t	   *claims;

	if (req->content_type == NULL ||
		strcmp(req->content_type, "application/x-www-form-urlencoded") != 0 ||
		strncmp(req->body, prefix, strlen(prefix)) != 0)
		fuzz_fail("FCM token request is not the JWT bearer grant: %s",
				  req->body);
	claims = fuzz_check_jwt(req->body + strlen(prefix), &header, NULL);
	fuzz_expect_string(header, "alg", "RS256", "FCM assertion header");
	fuzz_expect_string(claims, "iss", CLIENT_EMAIL, "FCM assertion");
	fuzz_expect_string(claims, "aud", mm_fcm_token_url, "FCM assertion");
	json_decref(header);
	json_decref(claims);
}

/* The send must use the access token the endpoint returned. */
static void
check_send_request(FuzzRequest *req, FuzzChunk token_response,
				   const char *push_token)
{
	const char *nl = memchr(token_response.data, '\n', token_response.len);
	json_t	   *root = json_loadb(nl + 1,
								  token_response.len - (nl + 1 - token_response.data),
								  0, NULL);
	const char *auth = fuzz_header(req, "Authorization");
	json_t	   *body = fuzz_parse_json(req->body, "FCM message");
	json_t	   *token = json_object_get(root, "access_token");
	const char *expected;

	/* mm_json_get_string() takes a number in its decimal spelling */
	expected = json_is_integer(token) ?
		psprintf("%lld", (long long) json_integer_value(token)) :
		json_string_value(token);
	if (expected == NULL || auth == NULL || strncmp(auth, "Bearer ", 7) != 0 ||
		strcmp(auth + 7, expected) != 0)
		fuzz_fail("FCM send does not carry the access token: %s",
				  auth ? auth : "(none)");
	fuzz_expect_string(json_object_get(body, "message"), "token", push_token,
					   "FCM message");
	json_decref(body);
	json_decref(root);
}

/*
 * The APNs path must decode back to the device token, and the provider
 * token must be an ES256 JWT with our key id and team.
 */
static void
check_apns_request(FuzzRequest *req, const char *push_token)
{
	char	   *prefix = psprintf("%s/3/device/", mm_apns_url);
	char	   *decoded;
	int			len;
	const char *auth = fuzz_header(req, "authorization");
	json_t	   *header;
	json_t	   *claims;
	uint8		signature[128];

	if (auth == NULL || strncmp(auth, "bearer ", 7) != 0)
		fuzz_fail("APNs request has no provider token");
	claims = fuzz_check_jwt(auth + 7, &header, NULL);
	fuzz_expect_string(header, "alg", "ES256", "APNs provider token header");
	fuzz_expect_string(header, "kid", mm_apns_key_id, "APNs provider token header");
	fuzz_expect_string(claims, "iss", mm_apns_team_id, "APNs provider token");
	json_decref(header);
	json_decref(claims);
	/* JOSE wants the raw 64-byte R||S pair, not OpenSSL's DER */
	len = strlen(strrchr(auth, '.') + 1);
	if (len > 100 ||
		fuzz_base64url_decode(strrchr(auth, '.') + 1, len, signature) != 64)
		fuzz_fail("APNs provider token signature is not 64 bytes");

	if (strncmp(req->url, prefix, strlen(prefix)) != 0)
		fuzz_fail("APNs URL is %s", req->url);
	decoded = curl_easy_unescape(NULL, req->url + strlen(prefix), 0, &len);
	if (decoded == NULL || (size_t) len != strlen(push_token) ||
		memcmp(decoded, push_token, len) != 0)
		fuzz_fail("APNs path does not decode to the device token");
	curl_free(decoded);
	if (!req->http2)
		fuzz_fail("APNs request is not HTTP/2");
	json_decref(fuzz_parse_json(req->body, "APNs payload"));
}

static void
run_input(void *arg)
{
	PushInput  *in = (PushInput *) arg;
	char	   *setup = fuzz_text(in->chunks[0]);
	char	   *token = strchr(setup, '\n');
	const MMPushProvider *provider;
	FuzzRequest *req;
	MMPushJob  *job;

	if (token == NULL || token[1] == '\0')
		return;
	*token++ = '\0';
	if (strcmp(setup, "fcm") == 0)
		provider = &mm_push_fcm;
	else if (strcmp(setup, "apns") == 0)
		provider = &mm_push_apns;
	else
		provider = &mm_push_webhook;

	job = fuzz_push_job(99, token, PAYLOAD);
	in->job = job;
	MemoryContextSwitchTo(job->cxt);
	provider->start(job);
	MemoryContextSwitchTo(fuzz_cxt);

	for (int next = 1; next < in->nchunks; next++)
	{
		req = fuzz_take_request();
		if (req == NULL)
			break;
		if (provider == &mm_push_fcm && req->content_type != NULL)
			check_token_request(req);
		else if (provider == &mm_push_fcm)
			check_send_request(req, in->chunks[next - 1], token);
		else if (provider == &mm_push_apns)
			check_apns_request(req, token);
		fuzz_respond(req, in->chunks[next]);
	}
	if (fuzz_pushes_done > 1)
		fuzz_fail("push reported done %d times", fuzz_pushes_done);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	PushInput	in;

	setup_keys();
	memset(&in, 0, sizeof(in));
	in.nchunks = fuzz_split(data, size, in.chunks, FUZZ_MAX_CHUNKS);

	/* every input starts without an FCM access token */
	mm_push_fcm.reset();
	(void) fuzz_run(run_input, &in);
	mm_push_fcm.reset();
	if (in.job)
		MemoryContextDelete(in.job->cxt);
	return 0;
}
