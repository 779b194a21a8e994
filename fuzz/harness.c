/*-------------------------------------------------------------------------
 *
 * harness.c
 *	  Shared pieces of the matchmaker fuzz targets: settings, the captured
 *	  HTTP engine, the worker's done-callbacks and property checks.
 *
 * The settings and mm_job_context normally live in matchmaker.c and
 * worker.c, which need a running server, so they are defined here instead.
 * Everything else the targets run is the product's code.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "utils/memutils.h"

#include "harness.h"

/* settings, as matchmaker.c defines them */
char	   *mm_database = "app";
int			mm_room_provider = MM_ROOM_JANUS;
char	   *mm_room_url = "http://127.0.0.1:8088/janus";
int			mm_push_provider = MM_PUSH_WEBHOOK;
char	   *mm_push_url = "http://127.0.0.1:9000/push";
int			mm_intent_ttl = 60;
int			mm_max_attempts = 5;
int			mm_retry_base = 1000;
int			mm_retry_max = 60000;
int			mm_connect_timeout = 2000;
int			mm_request_timeout = 5000;
int			mm_max_inflight = 64;
int			mm_poll_interval = 1000;
int			mm_batch_size = 100;
char	   *mm_webhook_secret = "";
char	   *mm_ca_file = "";
char	   *mm_fcm_project_id = "demo-project";
char	   *mm_fcm_key_file = "";
char	   *mm_fcm_token_url = "http://127.0.0.1:9001/token";
char	   *mm_fcm_url = "http://127.0.0.1:9001";
char	   *mm_apns_url = "http://127.0.0.1:9002";
char	   *mm_apns_key_file = "";
char	   *mm_apns_key_id = "ABC123DEFG";
char	   *mm_apns_team_id = "DEF123GHIJ";
char	   *mm_apns_topic = "com.example.voice";
char	   *mm_agora_app_id = "970CA35de60c44645bbae8a215061b33";
char	   *mm_agora_app_certificate = "5CFd2fd1755d40ecb72977518be15d3b";
char	   *mm_livekit_url = "ws://127.0.0.1:7880";
char	   *mm_livekit_api_key = "devkey";
char	   *mm_livekit_api_secret = "secret-of-at-least-thirty-two-bytes";
int			mm_room_token_ttl = 600;
int			mm_room_lifetime = 3600;

/* worker.c: the parent of every job's context */
MemoryContext mm_job_context = NULL;

/* emptied before each input */
MemoryContext fuzz_cxt = NULL;

int			fuzz_rooms_done = 0;
int			fuzz_closes_done = 0;
int			fuzz_pushes_done = 0;

#define MAX_REQUESTS 16

static FuzzRequest requests[MAX_REQUESTS];
static int	nrequests = 0;

static char key_dir[] = "/tmp/matchmaker-fuzz-XXXXXX";
static bool key_dir_made = false;

/* Report a broken property and stop, so that libFuzzer keeps the input. */
void
fuzz_fail(const char *fmt,...)
{
	va_list		args;

	fprintf(stderr, "property violated: ");
	va_start(args, fmt);
	vfprintf(stderr, fmt, args);
	va_end(args);
	fprintf(stderr, "\n");
	abort();
}

static void
remove_key_dir(void)
{
	char		cmd[128];

	if (!key_dir_made)
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", key_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", key_dir);
}

/* Set up the memory contexts once per process. */
void
fuzz_init(void)
{
	if (mm_job_context != NULL)
		return;
	mm_job_context = AllocSetContextCreate(TopMemoryContext, "jobs",
										   ALLOCSET_DEFAULT_SIZES);
	fuzz_cxt = AllocSetContextCreate(TopMemoryContext, "fuzz input",
									 ALLOCSET_DEFAULT_SIZES);
}

/*
 * Run body(arg) on one input, like the worker's PG_TRY around a job.
 * Returns false if it raised an ERROR.  Requests still pending afterwards
 * are dropped, as a reset provider would drop them.
 */
bool
fuzz_run(void (*body) (void *), void *arg)
{
	sigjmp_buf	local;
	sigjmp_buf *volatile saved = PG_exception_stack;
	volatile bool ok = true;

	fuzz_init();
	MemoryContextReset(fuzz_cxt);
	CurrentMemoryContext = fuzz_cxt;
	nrequests = 0;
	fuzz_rooms_done = fuzz_closes_done = fuzz_pushes_done = 0;

	if (sigsetjmp(local, 0) == 0)
	{
		PG_exception_stack = &local;
		body(arg);
	}
	else
		ok = false;
	PG_exception_stack = saved;
	CurrentMemoryContext = fuzz_cxt;
	nrequests = 0;
	return ok;
}

/* Cut the input at every line "%%". */
int
fuzz_split(const uint8_t *data, size_t size, FuzzChunk *chunks, int max)
{
	const char *p = (const char *) data;
	const char *end = p + size;
	int			n = 0;

	while (n < max)
	{
		const char *sep = NULL;

		for (const char *q = p; q + 4 <= end; q++)
		{
			if (memcmp(q, "\n%%\n", 4) == 0)
			{
				sep = q;
				break;
			}
		}
		chunks[n].data = p;
		chunks[n].len = sep ? (size_t) (sep - p) : (size_t) (end - p);
		n++;
		if (sep == NULL)
			break;
		p = sep + 4;
	}
	return n;
}

/* A chunk as a palloc'd C string, cut at its first NUL. */
char *
fuzz_text(FuzzChunk chunk)
{
	char	   *s = palloc(chunk.len + 1);

	memcpy(s, chunk.data, chunk.len);
	s[chunk.len] = '\0';
	return s;
}

/*
 * Check a request as libcurl would send it: the URL and every header
 * free of line breaks (a break would let a value smuggle in a header or
 * a second request), and a JSON body that parses.
 */
static void
capture(const MMHttpSpec *spec, MMHttpDone done, void *arg)
{
	FuzzRequest *req;
	int			n = 0;

	if (nrequests == MAX_REQUESTS)
		fuzz_fail("more than %d requests in flight", MAX_REQUESTS);
	req = &requests[nrequests++];
	memset(req, 0, sizeof(*req));

	for (const char *c = spec->url; *c; c++)
		if ((unsigned char) *c <= ' ' || *c == 0x7f)
			fuzz_fail("URL contains byte 0x%02x: %s", (unsigned char) *c,
					  spec->url);
	for (; spec->headers != NULL && spec->headers[n] != NULL; n++)
	{
		if (n == lengthof(req->headers) - 1)
			fuzz_fail("too many headers");
		if (strpbrk(spec->headers[n], "\r\n") != NULL)
			fuzz_fail("header contains a line break: %s", spec->headers[n]);
		if (strchr(spec->headers[n], ':') == NULL)
			fuzz_fail("header has no name: %s", spec->headers[n]);
		req->headers[n] = MemoryContextStrdup(fuzz_cxt, spec->headers[n]);
	}
	req->headers[n] = NULL;
	if (spec->content_type == NULL)
		json_decref(fuzz_parse_json(spec->body, "request body"));

	req->url = MemoryContextStrdup(fuzz_cxt, spec->url);
	req->body = MemoryContextStrdup(fuzz_cxt, spec->body);
	req->content_type = spec->content_type;
	req->http2 = spec->http2;
	req->done = done;
	req->arg = arg;
	req->cxt = CurrentMemoryContext;
}

/* The link routes the providers' calls of mm_http_request here. */
void		__wrap_mm_http_request(const MMHttpSpec *spec, MMHttpDone done,
								   void *arg);
void		__wrap_mm_http_post(const char *url, const char *body,
								const char *const *headers,
								MMHttpDone done, void *arg);

void
__wrap_mm_http_request(const MMHttpSpec *spec, MMHttpDone done, void *arg)
{
	capture(spec, done, arg);
}

void
__wrap_mm_http_post(const char *url, const char *body,
					const char *const *headers, MMHttpDone done, void *arg)
{
	MMHttpSpec	spec = {0};

	spec.url = url;
	spec.body = body;
	spec.headers = headers;
	capture(&spec, done, arg);
}

int
fuzz_pending_requests(void)
{
	return nrequests;
}

/* Take the oldest pending request, or NULL. */
FuzzRequest *
fuzz_take_request(void)
{
	static FuzzRequest taken;

	if (nrequests == 0)
		return NULL;
	taken = requests[0];
	memmove(&requests[0], &requests[1], sizeof(FuzzRequest) * (nrequests - 1));
	nrequests--;
	return &taken;
}

/* The value of a captured header, or NULL. */
const char *
fuzz_header(FuzzRequest *req, const char *name)
{
	size_t		len = strlen(name);

	for (int i = 0; req->headers[i] != NULL; i++)
		if (pg_strncasecmp(req->headers[i], name, len) == 0 &&
			req->headers[i][len] == ':')
			return req->headers[i] + len + 1 + (req->headers[i][len + 1] == ' ');
	return NULL;
}

/*
 * Finish a request the way http.c does: the body NUL-terminated in a
 * buffer of exactly its size (so that reading past it is caught), the
 * callback run in the request's memory context.
 */
void
fuzz_respond_raw(FuzzRequest *req, long status, int curl_code,
				 const char *body, size_t len, int retry_after_ms)
{
	MMHttpResponse resp;
	char	   *copy = malloc(len + 1);
	MemoryContext oldcxt;

	memcpy(copy, body, len);
	copy[len] = '\0';
	memset(&resp, 0, sizeof(resp));
	resp.status = status;
	resp.curl_code = curl_code;
	resp.curl_error = curl_code ? "Operation timed out after 5000 milliseconds" : NULL;
	resp.body = copy;
	resp.body_len = len;
	resp.retry_after_ms = retry_after_ms;

	oldcxt = MemoryContextSwitchTo(req->cxt);
	PG_TRY();
	{
		req->done(&resp, req->arg);
	}
	PG_FINALLY();
	{
		MemoryContextSwitchTo(oldcxt);
		free(copy);
	}
	PG_END_TRY();
}

/*
 * Finish a request with a response chunk: a first line "<status>
 * [Retry-After value]", then the body.  Status 0 is a transport error.
 */
void
fuzz_respond(FuzzRequest *req, FuzzChunk chunk)
{
	const char *nl = memchr(chunk.data, '\n', chunk.len);
	size_t		line_len = nl ? (size_t) (nl - chunk.data) : chunk.len;
	const char *body = nl ? nl + 1 : chunk.data + chunk.len;
	size_t		body_len = chunk.len - (body - chunk.data);
	long		status = 0;
	size_t		i = 0;
	int			retry_after_ms = -1;

	while (i < line_len && i < 3 && chunk.data[i] >= '0' && chunk.data[i] <= '9')
		status = status * 10 + (chunk.data[i++] - '0');
	if (i < line_len && chunk.data[i] == ' ')
		retry_after_ms = mm_http_parse_retry_after(chunk.data + i + 1,
												   line_len - i - 1);
	fuzz_respond_raw(req, status, status == 0 ? 28 : 0, body, body_len,
					 status == 0 ? -1 : retry_after_ms);
}

MMRoomJob *
fuzz_room_job(int64 match_id, const char *user_a, const char *user_b,
			  const char *mood)
{
	MemoryContext cxt = AllocSetContextCreate(mm_job_context, "room job",
											  ALLOCSET_SMALL_SIZES);
	MMRoomJob  *job = MemoryContextAllocZero(cxt, sizeof(MMRoomJob));

	job->cxt = cxt;
	job->match_id = match_id;
	job->users[0] = MemoryContextStrdup(cxt, user_a);
	job->users[1] = MemoryContextStrdup(cxt, user_b);
	job->mood = MemoryContextStrdup(cxt, mood);
	job->attempts = 1;
	job->outcome.retry_after_ms = -1;
	return job;
}

MMPushJob *
fuzz_push_job(int64 outbox_id, const char *push_token, const char *payload)
{
	MemoryContext cxt = AllocSetContextCreate(mm_job_context, "push job",
											  ALLOCSET_SMALL_SIZES);
	MMPushJob  *job = MemoryContextAllocZero(cxt, sizeof(MMPushJob));

	job->cxt = cxt;
	job->outbox_id = outbox_id;
	job->push_token = MemoryContextStrdup(cxt, push_token);
	job->payload = MemoryContextStrdup(cxt, payload);
	job->attempts = 1;
	job->outcome.retry_after_ms = -1;
	return job;
}

/* worker.c's callbacks: the targets look at the job afterwards. */
void
mm_room_done(MMRoomJob *job)
{
	fuzz_rooms_done++;
	fuzz_check_outcome(&job->outcome, false);
}

void
mm_close_done(MMCloseJob *job)
{
	fuzz_closes_done++;
	fuzz_check_outcome(&job->outcome, false);
}

void
mm_push_done(MMPushJob *job)
{
	fuzz_pushes_done++;
	fuzz_check_outcome(&job->outcome, true);
}

/*
 * True if s[0..len) is well-formed UTF-8 (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF) without NUL bytes, which is what
 * a text column in a UTF8 database accepts.
 */
bool
fuzz_valid_utf8(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *) s;
	size_t		i = 0;

	while (i < len)
	{
		unsigned char c = p[i];
		int			n;
		uint32		cp;

		if (c == 0)
			return false;
		if (c < 0x80)
		{
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			n = 1, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 3, cp = c & 0x07;
		else
			return false;
		if (i + n >= len)
			return false;
		for (int k = 1; k <= n; k++)
		{
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i + k] & 0x3f);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
			(cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
			return false;
		i += n + 1;
	}
	return true;
}

/*
 * Check what a provider reported: a known result, and an error text that
 * the worker can store in a text column.  A dead push token is only
 * reported with a failure: the worker records it when the push fails.
 */
void
fuzz_check_outcome(const MMOutcome *out, bool push)
{
	if (out->result != MM_OK && out->result != MM_RETRY &&
		out->result != MM_FAIL && out->result != MM_STALE)
		fuzz_fail("unknown result %d", (int) out->result);
	if (out->result != MM_OK && out->error == NULL)
		fuzz_fail("result %d comes without an error text", (int) out->result);
	if (out->error != NULL && !fuzz_valid_utf8(out->error, strlen(out->error)))
		fuzz_fail("error text is not valid UTF-8: %s", out->error);
	if (out->retry_after_ms < -1 || out->retry_after_ms > 86400000)
		fuzz_fail("retry_after_ms out of range: %d", out->retry_after_ms);
	if (out->token_dead && (!push || out->result != MM_FAIL))
		fuzz_fail("token_dead set with result %d", (int) out->result);
}

/* Parse JSON the product produced; it must always parse. */
json_t *
fuzz_parse_json(const char *text, const char *what)
{
	json_error_t jerr;
	json_t	   *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);

	if (root == NULL)
		fuzz_fail("%s is not valid JSON (%s): %s", what, jerr.text, text);
	return root;
}

void
fuzz_expect_string(json_t *obj, const char *key, const char *expected,
				   const char *what)
{
	const char *got = json_string_value(json_object_get(obj, key));

	if (got == NULL || strcmp(got, expected) != 0 ||
		json_string_length(json_object_get(obj, key)) != strlen(expected))
		fuzz_fail("%s: \"%s\" is \"%s\", expected \"%s\"", what, key,
				  got ? got : "(missing)", expected);
}

/*
 * Decode unpadded base64url independently of sign.c.  Returns the
 * number of bytes, or (size_t) -1 when a character is outside the
 * alphabet or the length is impossible.
 */
size_t
fuzz_base64url_decode(const char *in, size_t len, uint8 *out)
{
	uint32		acc = 0;
	int			bits = 0;
	size_t		n = 0;

	if (len % 4 == 1)
		return (size_t) -1;
	for (size_t i = 0; i < len; i++)
	{
		char		c = in[i];
		int			v;

		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '-')
			v = 62;
		else if (c == '_')
			v = 63;
		else
			return (size_t) -1;
		acc = (acc << 6) | v;
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			out[n++] = (acc >> bits) & 0xff;
		}
	}
	/* the unused low bits of the last character must be zero */
	if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
		return (size_t) -1;
	return n;
}

static json_t *
decode_jwt_part(const char *part, size_t len, const char *what)
{
	uint8	   *raw = palloc(len + 1);
	size_t		n = fuzz_base64url_decode(part, len, raw);

	if (n == (size_t) -1)
		fuzz_fail("JWT %s is not unpadded base64url", what);
	raw[n] = '\0';
	if (strlen((char *) raw) != n)
		fuzz_fail("JWT %s contains a NUL byte", what);
	return fuzz_parse_json((char *) raw, what);
}

/*
 * Check that jwt is three base64url parts whose header and claims are
 * JSON objects, and with hs256_secret, that the signature is the
 * HMAC-SHA256 of the first two parts.  Returns the claims; *header gets
 * the header.
 */
json_t *
fuzz_check_jwt(const char *jwt, json_t **header, const char *hs256_secret)
{
	const char *dot1 = strchr(jwt, '.');
	const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	json_t	   *claims;

	if (dot1 == NULL || dot2 == NULL || strchr(dot2 + 1, '.') != NULL)
		fuzz_fail("JWT does not have three parts: %s", jwt);
	*header = decode_jwt_part(jwt, dot1 - jwt, "header");
	claims = decode_jwt_part(dot1 + 1, dot2 - dot1 - 1, "claims");
	if (!json_is_object(*header) || !json_is_object(claims))
		fuzz_fail("JWT header or claims is not an object");

	if (hs256_secret != NULL)
	{
		uint8		mac[32];
		unsigned int maclen = sizeof(mac);
		uint8		sig[64];
		size_t		siglen = fuzz_base64url_decode(dot2 + 1, strlen(dot2 + 1), sig);

		HMAC(EVP_sha256(), hs256_secret, (int) strlen(hs256_secret),
			 (const uint8 *) jwt, dot2 - jwt, mac, &maclen);
		if (siglen != 32 || memcmp(sig, mac, 32) != 0)
			fuzz_fail("JWT signature is not the HMAC-SHA256 of its input");
		if (strcmp(json_string_value(json_object_get(*header, "alg")), "HS256") != 0)
			fuzz_fail("HS256 JWT header names another algorithm");
	}
	return claims;
}

/* Write a key file with mode 0600 into a private directory. */
char *
fuzz_write_key_file(const char *name, const char *contents)
{
	char	   *path;
	FILE	   *f;

	if (!key_dir_made)
	{
		if (mkdtemp(key_dir) == NULL)
			fuzz_fail("could not create a directory for key files");
		key_dir_made = true;
		atexit(remove_key_dir);
	}
	path = MemoryContextStrdup(TopMemoryContext,
							   psprintf("%s/%s", key_dir, name));
	f = fopen(path, "w");
	if (f == NULL || fputs(contents, f) < 0 || fclose(f) != 0 ||
		chmod(path, 0600) != 0)
		fuzz_fail("could not write %s", path);
	return path;
}

/*
 * A fresh private key in PEM: RSA (1024 bits, to keep signing fast; the
 * targets check the format, not the strength) or P-256.
 */
char *
fuzz_pem_private_key(bool rsa)
{
	EVP_PKEY   *key = rsa ? EVP_RSA_gen(1024) : EVP_EC_gen("P-256");
	BIO		   *bio = BIO_new(BIO_s_mem());
	char	   *data;
	long		len;
	char	   *pem;

	if (key == NULL || bio == NULL ||
		!PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL))
		fuzz_fail("could not make a test key");
	len = BIO_get_mem_data(bio, &data);
	pem = MemoryContextAlloc(TopMemoryContext, len + 1);
	memcpy(pem, data, len);
	pem[len] = '\0';
	BIO_free(bio);
	EVP_PKEY_free(key);
	return pem;
}
