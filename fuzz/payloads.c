/*-------------------------------------------------------------------------
 *
 * payloads.c
 *	  Fuzz target: every request body and token the worker builds from
 *	  values users control: user ids, moods, push tokens, and what a room
 *	  service handed out (room names, join tokens).
 *
 * Input chunks (see harness.h), each a string: user a, user b, mood, push
 * token, room, join token, Agora channel, and a repeat count (first byte,
 * plus one) that makes every string that many times longer.
 *
 * Each builder's output must parse and give back every input string byte
 * for byte.  JSON is parsed with jansson, JWTs as three base64url parts
 * whose HMAC is checked with OpenSSL, and Agora tokens are inflated and
 * decoded field by field.  A value a builder cannot encode (invalid
 * UTF-8) must end the job with an error, never a malformed request.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <zlib.h>

#include "utils/memutils.h"

#include "harness.h"

#define NFIELDS 7
#define WEBHOOK_KEY "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define AGORA_APP_ID "970CA35de60c44645bbae8a215061b33"
#define AGORA_CERT "5CFd2fd1755d40ecb72977518be15d3b"

enum
{
	USER_A, USER_B, MOOD, PUSH_TOKEN, ROOM, JOIN_TOKEN, CHANNEL
};

typedef struct PayloadInput
{
	FuzzChunk	chunks[FUZZ_MAX_CHUNKS];
	int			nchunks;
	int			repeat;
	char	   *field[NFIELDS];
	MMRoomJob  *room_job;
	MMPushJob  *push_job;
	json_t	   *payload;		/* the outbox payload as an object */
} PayloadInput;

static bool
valid(const char *s)
{
	return fuzz_valid_utf8(s, strlen(s));
}

/* Make the input's strings, in fuzz_cxt, repeated as asked. */
static void
load_fields(PayloadInput *in)
{
	for (int i = 0; i < NFIELDS; i++)
	{
		char	   *s = i < in->nchunks ? fuzz_text(in->chunks[i]) : "";
		StringInfoData buf;

		if (s[0] == '\0')
			s = i == CHANNEL ? "match-42" : "x";
		initStringInfo(&buf);
		for (int r = 0; r < in->repeat; r++)
			appendBinaryStringInfo(&buf, s, strlen(s));
		in->field[i] = buf.data;
	}
}

/* The outbox payload of a match, as the worker's SQL builds it. */
static char *
make_payload(PayloadInput *in, json_t **object)
{
	json_t	   *payload = NULL;
	char	   *text;
	char	   *result;

	if (valid(in->field[MOOD]) && valid(in->field[ROOM]) &&
		valid(in->field[JOIN_TOKEN]))
		payload = json_pack("{s:s, s:I, s:I, s:s, s:s, s:s, s:s}",
							"type", "match", "intent_id", (json_int_t) 7,
							"match_id", (json_int_t) 3,
							"mood", in->field[MOOD],
							"room", in->field[ROOM],
							"token", in->field[JOIN_TOKEN],
							"url", "ws://127.0.0.1:7880");
	if (payload == NULL)
		payload = json_pack("{s:s, s:I, s:s}", "type", "expired",
							"intent_id", (json_int_t) 7, "mood", "happy");
	in->payload = payload;
	*object = payload;
	text = json_dumps(payload, JSON_COMPACT);
	result = pstrdup(text);
	free(text);
	return result;
}

/* The http room provider's request carries the users and mood exactly. */
static void
step_room_request(void *arg)
{
	PayloadInput *in = (PayloadInput *) arg;
	MMRoomJob  *job;
	FuzzRequest *req;
	json_t	   *root;

	load_fields(in);
	job = fuzz_room_job(42, in->field[USER_A], in->field[USER_B],
						in->field[MOOD]);
	in->room_job = job;
	mm_room_url = "http://127.0.0.1:8090/rooms";
	MemoryContextSwitchTo(job->cxt);
	mm_room_http.start(job);	/* invalid UTF-8 raises an ERROR here */
	MemoryContextSwitchTo(fuzz_cxt);

	req = fuzz_take_request();
	if (req == NULL)
		fuzz_fail("no room request for valid values");
	root = fuzz_parse_json(req->body, "room request");
	fuzz_expect_string(root, "mood", in->field[MOOD], "room request");
	for (int i = 0; i < 2; i++)
	{
		json_t	   *users = json_pack("{s:O}", "u",
									  json_array_get(json_object_get(root, "users"), i));

		fuzz_expect_string(users, "u", in->field[USER_A + i], "room request user");
		json_decref(users);
	}
	json_decref(root);
}

/* LiveKit's user tokens name each user exactly, whatever the bytes. */
static void
step_livekit_tokens(void *arg)
{
	PayloadInput *in = (PayloadInput *) arg;
	MMRoomJob  *job;

	load_fields(in);
	job = fuzz_room_job(42, in->field[USER_A], in->field[USER_B], "happy");
	in->room_job = job;
	mm_room_url = "";
	MemoryContextSwitchTo(job->cxt);
	mm_room_livekit.start(job); /* invalid UTF-8 raises an ERROR here */
	MemoryContextSwitchTo(fuzz_cxt);

	if (job->outcome.result != MM_OK)
		fuzz_fail("LiveKit tokens failed: %s", job->outcome.error);
	for (int i = 0; i < 2; i++)
	{
		json_t	   *header;
		json_t	   *claims = fuzz_check_jwt(job->tokens[i], &header,
											mm_livekit_api_secret);

		fuzz_expect_string(claims, "sub", in->field[USER_A + i], "LiveKit token");
		json_decref(header);
		json_decref(claims);
		json_decref(job->extras[i]);
		job->extras[i] = NULL;
	}
}

/* The signed webhook: body round trip and an HMAC OpenSSL agrees with. */
static void
step_webhook(void *arg)
{
	PayloadInput *in = (PayloadInput *) arg;
	json_t	   *payload;
	char	   *text;
	MMPushJob  *job;
	FuzzRequest *req;
	json_t	   *body;
	const char *id;
	const char *ts;
	const char *sig;
	uint8		key[64];
	int			keylen;
	uint8		mac[32];
	unsigned int maclen = sizeof(mac);
	uint8		expected[64];
	char	   *msg;

	load_fields(in);
	text = make_payload(in, &payload);
	job = fuzz_push_job(1234, in->field[PUSH_TOKEN], text);
	in->push_job = job;
	mm_webhook_secret = WEBHOOK_KEY;
	MemoryContextSwitchTo(job->cxt);
	mm_push_webhook.start(job);
	MemoryContextSwitchTo(fuzz_cxt);
	mm_webhook_secret = "";

	req = fuzz_take_request();
	if (req == NULL)
	{
		if (valid(in->field[PUSH_TOKEN]) || job->outcome.result != MM_FAIL)
			fuzz_fail("webhook push not sent: %s", job->outcome.error);
		return;
	}
	body = fuzz_parse_json(req->body, "webhook body");
	fuzz_expect_string(body, "to", in->field[PUSH_TOKEN], "webhook body");
	if (!json_equal(json_object_get(body, "data"), payload))
		fuzz_fail("webhook data is not the outbox payload");
	json_decref(body);

	id = fuzz_header(req, "webhook-id");
	ts = fuzz_header(req, "webhook-timestamp");
	sig = fuzz_header(req, "webhook-signature");
	if (id == NULL || ts == NULL || sig == NULL || strcmp(id, "1234") != 0)
		fuzz_fail("webhook headers missing");
	keylen = EVP_DecodeBlock(key, (const uint8 *) WEBHOOK_KEY + 6,
							 strlen(WEBHOOK_KEY) - 6);
	msg = psprintf("%s.%s.%s", id, ts, req->body);
	HMAC(EVP_sha256(), key, keylen, (uint8 *) msg, strlen(msg), mac, &maclen);
	EVP_EncodeBlock(expected, mac, 32);
	if (strncmp(sig, "v1,", 3) != 0 || strcmp(sig + 3, (char *) expected) != 0)
		fuzz_fail("webhook signature %s, expected v1,%s", sig, expected);
}

/* FCM: the push token and every data value as strings, exactly. */
static void
step_fcm(void *arg)
{
	PayloadInput *in = (PayloadInput *) arg;
	json_t	   *payload;
	char	   *text;
	MMPushJob  *job;
	FuzzRequest *req;
	json_t	   *message;
	json_t	   *root;
	json_t	   *data;
	const char *key;
	json_t	   *value;
	static const char token_answer[] =
		"200\n{\"access_token\":\"ya29.fuzz\",\"expires_in\":3599}";

	load_fields(in);
	text = make_payload(in, &payload);
	job = fuzz_push_job(1234, in->field[PUSH_TOKEN], text);
	in->push_job = job;
	MemoryContextSwitchTo(job->cxt);
	mm_push_fcm.start(job);
	MemoryContextSwitchTo(fuzz_cxt);

	/* the access token is fetched once and kept for later inputs */
	req = fuzz_take_request();
	if (req != NULL && req->content_type != NULL)
	{
		fuzz_respond(req, (FuzzChunk) {token_answer, strlen(token_answer)});
		req = fuzz_take_request();
	}
	if (req == NULL)
	{
		if (valid(in->field[PUSH_TOKEN]) || job->outcome.result != MM_FAIL)
			fuzz_fail("FCM push not sent: %s", job->outcome.error);
		return;
	}
	root = fuzz_parse_json(req->body, "FCM message");
	message = json_object_get(root, "message");
	fuzz_expect_string(message, "token", in->field[PUSH_TOKEN], "FCM message");
	data = json_object_get(message, "data");
	if (json_object_size(data) != json_object_size(payload))
		fuzz_fail("FCM data has %zu keys, the payload %zu",
				  json_object_size(data), json_object_size(payload));
	json_object_foreach(payload, key, value)
	{
		if (json_is_string(value))
			fuzz_expect_string(data, key, json_string_value(value), "FCM data");
		else if (json_is_integer(value))
			fuzz_expect_string(data, key,
							   psprintf("%lld", (long long) json_integer_value(value)),
							   "FCM data");
	}
	json_decref(root);
}

/* APNs: the path decodes to the device token, the data is the payload. */
static void
step_apns(void *arg)
{
	PayloadInput *in = (PayloadInput *) arg;
	json_t	   *payload;
	char	   *text;
	MMPushJob  *job;
	FuzzRequest *req;
	json_t	   *root;
	char	   *prefix = psprintf("%s/3/device/", mm_apns_url);
	char	   *decoded;
	int			len;

	load_fields(in);
	text = make_payload(in, &payload);
	job = fuzz_push_job(1234, in->field[PUSH_TOKEN], text);
	in->push_job = job;
	MemoryContextSwitchTo(job->cxt);
	mm_push_apns.start(job);
	MemoryContextSwitchTo(fuzz_cxt);

	req = fuzz_take_request();
	if (req == NULL)
	{
		if (job->outcome.result != MM_FAIL ||
			strstr(job->outcome.error, "limit") == NULL)
			fuzz_fail("APNs push not sent: %s", job->outcome.error);
		return;
	}
	if (strlen(req->body) > 4096)
		fuzz_fail("APNs payload of %zu bytes sent", strlen(req->body));
	decoded = curl_easy_unescape(NULL, req->url + strlen(prefix), 0, &len);
	if (decoded == NULL || (size_t) len != strlen(in->field[PUSH_TOKEN]) ||
		memcmp(decoded, in->field[PUSH_TOKEN], len) != 0)
		fuzz_fail("APNs path does not decode to the device token");
	curl_free(decoded);
	root = fuzz_parse_json(req->body, "APNs payload");
	if (!json_equal(json_object_get(root, "data"), payload))
		fuzz_fail("APNs data is not the outbox payload");
	json_decref(root);
}

static uint32
get_u32(const uint8 *p)
{
	return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32) p[3] << 24);
}

/*
 * Agora: decode the AccessToken2 field by field (layout and signing as
 * in Agora's AccessToken2 reference) and find the channel and uid again.
 */
static void
step_agora(void *arg)
{
	PayloadInput *in = (PayloadInput *) arg;
	const char *error = NULL;
	const char *channel;
	char	   *token;
	size_t		b64len;
	uint8	   *z;
	int			zlen;
	uLongf		rawlen;
	uint8	   *raw;
	const uint8 *p;
	const uint8 *end;
	const uint8 *info;
	uint8		ts_key[4] = {0x10, 0x32, 0x54, 0x76};
	uint8		salt_key[4] = {0x78, 0x56, 0x34, 0x12};
	uint8		k1[32];
	uint8		k2[32];
	uint8		sig[32];
	unsigned int n = 32;
	int			nprivileges;

	load_fields(in);
	channel = in->field[CHANNEL];

	/* a malformed app id is an error, not a token */
	if (mm_agora_token(in->field[MOOD], AGORA_CERT, channel, 1, 1, 1, 1,
					   true, &error) != NULL &&
		strlen(in->field[MOOD]) != 32)
		fuzz_fail("Agora token made with app id \"%s\"", in->field[MOOD]);

	token = mm_agora_token(AGORA_APP_ID, AGORA_CERT, channel, 2, 0x76543210,
						   600, 0x12345678, true, &error);
	if (token == NULL)
	{
		if (strlen(channel) <= PG_UINT16_MAX)
			fuzz_fail("Agora token failed: %s", error);
		return;
	}
	if (strlen(channel) > PG_UINT16_MAX)
		fuzz_fail("Agora token made for a channel of %zu bytes, longer than its 16-bit length",
				  strlen(channel));
	if (strncmp(token, "007", 3) != 0)
		fuzz_fail("Agora token does not start with 007");

	b64len = strlen(token + 3);
	z = palloc(b64len);
	zlen = EVP_DecodeBlock(z, (const uint8 *) token + 3, (int) b64len);
	if (zlen < 0 || b64len % 4 != 0)
		fuzz_fail("Agora token is not base64");
	zlen -= (token[3 + b64len - 1] == '=') + (token[3 + b64len - 2] == '=');
	rawlen = 2 * strlen(channel) + 1024;
	raw = palloc(rawlen);
	if (uncompress(raw, &rawlen, z, zlen) != Z_OK)
		fuzz_fail("Agora token does not inflate");

	p = raw;
	end = raw + rawlen;
#define NEED(k) do { if (end - p < (k)) fuzz_fail("Agora token ends early"); } while (0)
	NEED(2 + 32);
	if (p[0] != 32 || p[1] != 0)
		fuzz_fail("Agora signature length is not 32");
	p += 2 + 32;
	info = p;
	NEED(2 + 32 + 12 + 4 + 2);
	if (p[0] != 32 || memcmp(p + 2, AGORA_APP_ID, 32) != 0)
		fuzz_fail("Agora app id does not decode");
	p += 2 + 32;
	if (get_u32(p) != 0x76543210 || get_u32(p + 8) != 0x12345678)
		fuzz_fail("Agora issue time or salt does not decode");
	p += 12 + 4;				/* times, one service of type 1 */
	nprivileges = p[0] | (p[1] << 8);
	p += 2;
	NEED(nprivileges * 6 + 2);
	p += nprivileges * 6;
	if ((size_t) (p[0] | (p[1] << 8)) != strlen(channel) ||
		end - p < 2 + (long) strlen(channel) ||
		memcmp(p + 2, channel, strlen(channel)) != 0)
		fuzz_fail("Agora channel does not decode to the input");
	p += 2 + strlen(channel);
	NEED(3);
	if (p[0] != 1 || p[1] != 0 || p[2] != '2' || p + 3 != end)
		fuzz_fail("Agora uid does not decode");
#undef NEED

	HMAC(EVP_sha256(), ts_key, 4, (const uint8 *) AGORA_CERT, 32, k1, &n);
	HMAC(EVP_sha256(), salt_key, 4, k1, 32, k2, &n);
	HMAC(EVP_sha256(), k2, 32, info, end - info, sig, &n);
	if (memcmp(sig, raw + 2, 32) != 0)
		fuzz_fail("Agora signature does not match its content");
}

/* A hand-edited Janus plan: its tokens reach the create request intact. */
static void
step_janus_plan(void *arg)
{
	PayloadInput *in = (PayloadInput *) arg;
	MMRoomJob  *job;
	FuzzRequest *req;
	json_t	   *root;
	json_t	   *body;
	static const char session[] = "200\n{\"janus\":\"success\",\"data\":{\"id\":11}}";
	static const char handle[] = "200\n{\"janus\":\"success\",\"data\":{\"id\":22}}";

	load_fields(in);
	job = fuzz_room_job(42, "a", "b", "happy");
	in->room_job = job;
	job->plan = json_pack("{s:I, s:s, s:[s, s]}", "room", (json_int_t) 4242,
						  "secret", in->field[MOOD],
						  "tokens", in->field[USER_A], in->field[USER_B]);
	if (job->plan == NULL)
		return;					/* invalid UTF-8 cannot be in a jsonb plan */
	mm_room_janus.reset();
	mm_room_url = "http://127.0.0.1:8088/janus";
	MemoryContextSwitchTo(job->cxt);
	mm_room_janus.start(job);
	MemoryContextSwitchTo(fuzz_cxt);
	fuzz_respond(fuzz_take_request(), (FuzzChunk) {session, strlen(session)});
	fuzz_respond(fuzz_take_request(), (FuzzChunk) {handle, strlen(handle)});
	req = fuzz_take_request();
	if (req == NULL)
		fuzz_fail("no Janus create request");
	root = fuzz_parse_json(req->body, "Janus create");
	body = json_object_get(root, "body");
	if (!json_equal(json_object_get(body, "allowed"),
					json_object_get(job->plan, "tokens")))
		fuzz_fail("Janus create does not allow the plan's tokens");
	fuzz_expect_string(body, "secret", in->field[MOOD], "Janus create");
	json_decref(root);
}

/* Delete what a step left behind, as the worker does once it records. */
static void
end_step(PayloadInput *in)
{
	if (in->room_job)
	{
		for (int i = 0; i < 2; i++)
			json_decref(in->room_job->extras[i]);
		json_decref(in->room_job->plan);
		MemoryContextDelete(in->room_job->cxt);
	}
	if (in->push_job)
		MemoryContextDelete(in->push_job->cxt);
	json_decref(in->payload);
	in->payload = NULL;
	in->room_job = NULL;
	in->push_job = NULL;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool keys_made = false;
	static void (*const steps[]) (void *) = {
		step_room_request, step_livekit_tokens, step_webhook, step_fcm,
		step_apns, step_agora, step_janus_plan
	};
	PayloadInput in;
	bool		verbose = getenv("FUZZ_VERBOSE") != NULL;

	if (!keys_made)
	{
		json_t	   *account;

		fuzz_init();
		account = json_pack("{s:s, s:s}", "client_email", "fuzz@example.iam.gserviceaccount.com",
							"private_key", fuzz_pem_private_key(true));
		mm_fcm_key_file = fuzz_write_key_file("sa.json", mm_json_dump(account));
		mm_apns_key_file = fuzz_write_key_file("apns.p8", fuzz_pem_private_key(false));
		keys_made = true;
	}

	memset(&in, 0, sizeof(in));
	in.nchunks = fuzz_split(data, size, in.chunks, FUZZ_MAX_CHUNKS);
	in.repeat = 1;
	if (in.nchunks > NFIELDS && in.chunks[NFIELDS].len > 0)
		in.repeat = 1 + (uint8) in.chunks[NFIELDS].data[0];

	for (int i = 0; i < lengthof(steps); i++)
	{
		bool		ok;

		ok = fuzz_run(steps[i], &in);
		if (verbose)
			fprintf(stderr, "step %d: %s\n", i,
					ok ? "checked" : stub_last_error);
		/* forget queued jobs before their memory goes */
		if (!ok)
			mm_push_fcm.reset();
		mm_room_janus.reset();
		end_step(&in);
	}
	return 0;
}
