/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  Fuzz target: key and secret parsing: the "whsec_" webhook secret, the
 *	  base64 coder of sign.c, and the FCM service-account and APNs key
 *	  files as the settings' check hooks read them.
 *
 * The first input byte picks the parser; the rest is its input.
 *
 * A webhook secret that is "whsec_" and strict base64 of 24 to 64 bytes
 * must sign exactly as HMAC-SHA256 with the decoded key, computed here
 * with OpenSSL.  Any other secret raises an ERROR or signs in the
 * "v1,<base64>" form.  mm_base64() must agree with OpenSSL's encoder, and
 * both alphabets must decode back to the input.  mm_base64_decode() must
 * not write past its buffer.  A key file is accepted, or rejected with a
 * message.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "fmgr.h"
#include "utils/guc.h"
#include "utils/memutils.h"

/* PostgreSQL's SQL function json_object clashes with jansson's */
#define json_object pg_sql_json_object
#include "utils/builtins.h"
#undef json_object

#include "harness.h"

extern Datum matchmaker_webhook_signature(PG_FUNCTION_ARGS);

/*
 * Decode "whsec_" plus strict base64 (padded, no stray characters, zero
 * trailing bits) with OpenSSL.  Returns the key length, or -1.
 */
static int
strict_secret(const char *secret, uint8 *key)
{
	const char *b64 = secret + 6;
	size_t		len;
	uint8		raw[128];
	int			n;
	char	   *canonical;

	if (strncmp(secret, "whsec_", 6) != 0)
		return -1;
	len = strlen(b64);
	if (len == 0 || len % 4 != 0 || len > 4 * 22)
		return -1;
	n = EVP_DecodeBlock(raw, (const uint8 *) b64, (int) len);
	if (n < 0)
		return -1;
	/* EVP_DecodeBlock keeps the padding bytes as zeros */
	if (b64[len - 1] == '=')
		n--;
	if (b64[len - 2] == '=')
		n--;
	/* only the canonical spelling counts: it must encode back the same */
	canonical = mm_base64(raw, n, false);
	if (strcmp(canonical, b64) != 0 || n < 24 || n > 64)
		return -1;
	memcpy(key, raw, n);
	return n;
}

static void
check_webhook_secret(const char *secret)
{
	LOCAL_FCINFO(fcinfo, 4);
	const char *id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
	const char *body = "{\"to\":\"t\",\"data\":{\"type\":\"match\"}}";
	int64		ts = 1700000000;
	uint8		key[64];
	int			keylen = strict_secret(secret, key);
	char	   *signature;

	InitFunctionCallInfoData(*fcinfo, NULL, 4, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = PointerGetDatum(cstring_to_text(secret));
	fcinfo->args[1].value = PointerGetDatum(cstring_to_text(id));
	fcinfo->args[2].value = Int64GetDatum(ts);
	fcinfo->args[3].value = PointerGetDatum(cstring_to_text(body));
	for (int i = 0; i < 4; i++)
		fcinfo->args[i].isnull = false;

	/* a rejected secret raises an ERROR, which ends the input here */
	signature = text_to_cstring(DatumGetTextPP(matchmaker_webhook_signature(fcinfo)));

	if (strncmp(signature, "v1,", 3) != 0 || strlen(signature) != 3 + 44)
		fuzz_fail("webhook signature is \"%s\"", signature);
	if (keylen > 0)
	{
		char	   *msg = psprintf("%s." INT64_FORMAT ".%s", id, ts, body);
		uint8		mac[32];
		unsigned int maclen = sizeof(mac);
		uint8		encoded[64];

		HMAC(EVP_sha256(), key, keylen, (uint8 *) msg, strlen(msg), mac, &maclen);
		EVP_EncodeBlock(encoded, mac, 32);
		if (strcmp(signature + 3, (char *) encoded) != 0)
			fuzz_fail("webhook signature %s, expected v1,%s", signature, encoded);
	}
}

/* mm_base64() against OpenSSL, and back through both decoders. */
static void
check_base64(const uint8 *data, size_t len)
{
	char	   *std = mm_base64(data, len, false);
	char	   *url = mm_base64(data, len, true);
	uint8	   *expected = palloc(4 * ((len + 2) / 3) + 1);
	uint8	   *back = palloc(len + 1);
	int			n;

	EVP_EncodeBlock(expected, data, (int) len);
	if (strcmp(std, (char *) expected) != 0)
		fuzz_fail("mm_base64 gives %s, OpenSSL %s", std, expected);

	n = mm_base64_decode(std, back, len);
	if (n != (int) len || memcmp(back, data, len) != 0)
		fuzz_fail("mm_base64_decode does not invert mm_base64 (%d of %zu bytes)",
				  n, len);
	if (len > 0 && mm_base64_decode(std, back, len - 1) != -1)
		fuzz_fail("mm_base64_decode did not report a short buffer");

	if (strchr(url, '=') || strchr(url, '+') || strchr(url, '/'))
		fuzz_fail("base64url output has padding or a standard character");
	if (fuzz_base64url_decode(url, strlen(url), back) != len ||
		memcmp(back, data, len) != 0)
		fuzz_fail("base64url does not decode back to the input");
}

/* Decode arbitrary text into a buffer of exactly the given size. */
static void
check_base64_decode(const char *text, size_t outlen)
{
	uint8	   *out = malloc(outlen ? outlen : 1);
	int			n = mm_base64_decode(text, out, outlen);

	free(out);
	if (n < -1 || n > (int) outlen)
		fuzz_fail("mm_base64_decode returned %d for a buffer of %zu", n, outlen);
}

/* The settings' check hooks on a key file with the input as contents. */
static void
check_key_file(const char *contents, bool fcm)
{
	static char *path = NULL;
	char	   *value;
	bool		ok;
	FILE	   *f;

	if (path == NULL)
		path = fuzz_write_key_file("key", "");
	f = fopen(path, "w");
	if (f == NULL || fputs(contents, f) < 0 || fclose(f) != 0)
		fuzz_fail("could not write %s", path);
	value = path;
	GUC_check_errdetail_string = NULL;
	ok = fcm ? mm_check_fcm_key_file(&value, NULL, PGC_S_FILE) :
		mm_check_apns_key_file(&value, NULL, PGC_S_FILE);
	if (!ok && GUC_check_errdetail_string == NULL)
		fuzz_fail("key file rejected without a message");
	if (!ok && strstr(GUC_check_errdetail_string, "-----BEGIN") != NULL)
		fuzz_fail("key file message quotes the key");
}

static void
run_input(void *arg)
{
	FuzzChunk  *in = (FuzzChunk *) arg;
	uint8		mode = (uint8) in->data[0];
	FuzzChunk	rest = {in->data + 1, in->len - 1};
	char	   *text = fuzz_text(rest);

	switch (mode % 5)
	{
		case 0:
			check_webhook_secret(text);
			break;
		case 1:
			check_base64((const uint8 *) rest.data, rest.len);
			break;
		case 2:
			check_base64_decode(text, mode / 5);
			break;
		case 3:
			check_key_file(text, true);
			break;
		case 4:
			check_key_file(text, false);
			break;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzChunk	in;

	if (size < 1)
		return 0;
	in.data = (const char *) data;
	in.len = size;
	(void) fuzz_run(run_input, &in);
	return 0;
}
