/*-------------------------------------------------------------------------
 *
 * sign.c
 *	  Base64, HMAC and JSON Web Token signing for the push providers.
 *
 * Standard Webhooks signs with HMAC-SHA256 and standard base64.  Google's
 * OAuth assertion is an RS256 JWT and Apple's provider token an ES256 JWT,
 * both base64url without padding.  ES256 signatures in a JWT are the raw
 * 64-byte R||S pair, not the DER structure OpenSSL produces, so they are
 * converted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "matchmaker.h"

static const char b64_std[] =
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] =
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/*
 * Encode len bytes as base64: standard alphabet with padding, or the URL
 * alphabet without padding.  Returns a palloc'd string.
 */
char *
mm_base64(const uint8 *data, size_t len, bool url)
{
	const char *alphabet = url ? b64_url : b64_std;
	char	   *out = palloc(((len + 2) / 3) * 4 + 1);
	char	   *p = out;
	size_t		i;

	for (i = 0; i + 2 < len; i += 3)
	{
		uint32		v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];

		*p++ = alphabet[(v >> 18) & 63];
		*p++ = alphabet[(v >> 12) & 63];
		*p++ = alphabet[(v >> 6) & 63];
		*p++ = alphabet[v & 63];
	}
	if (i < len)
	{
		uint32		v = data[i] << 16;

		if (i + 1 < len)
			v |= data[i + 1] << 8;
		*p++ = alphabet[(v >> 18) & 63];
		*p++ = alphabet[(v >> 12) & 63];
		if (i + 1 < len)
			*p++ = alphabet[(v >> 6) & 63];
		else if (!url)
			*p++ = '=';
		if (!url)
			*p++ = '=';
	}
	*p = '\0';
	return out;
}

/*
 * Decode standard base64 (padding optional).  Returns the number of bytes
 * written to out (at most outlen), or -1 if the input is not base64 or
 * does not fit.
 */
int
mm_base64_decode(const char *in, uint8 *out, size_t outlen)
{
	uint32		acc = 0;
	int			bits = 0;
	size_t		n = 0;

	for (; *in != '\0' && *in != '='; in++)
	{
		const char *pos = strchr(b64_std, *in);

		if (pos == NULL)
			return -1;
		acc = (acc << 6) | (uint32) (pos - b64_std);
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			if (n >= outlen)
				return -1;
			out[n++] = (uint8) ((acc >> bits) & 0xff);
		}
	}
	return (int) n;
}

/* HMAC-SHA256 of msg under key; out receives 32 bytes. */
void
mm_hmac_sha256(const uint8 *key, size_t keylen, const char *msg, size_t msglen,
			   uint8 *out)
{
	unsigned int outlen = 32;

	if (HMAC(EVP_sha256(), key, (int) keylen, (const uint8 *) msg, msglen,
			 out, &outlen) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute HMAC-SHA256")));
}

/*
 * Load a PEM private key (PKCS#8 or traditional) from memory.  Returns
 * NULL and sets *error when the text contains no usable key.
 */
EVP_PKEY *
mm_load_private_key(const char *pem, const char **error)
{
	BIO		   *bio;
	EVP_PKEY   *key;

	bio = BIO_new_mem_buf(pem, -1);
	if (bio == NULL)
	{
		*error = "out of memory";
		return NULL;
	}
	key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
	BIO_free(bio);
	ERR_clear_error();
	if (key == NULL)
		*error = "no PEM private key found";
	return key;
}

/*
 * Build a signed JWT from a header and claims object (both consumed).
 * key must be an RSA key (RS256) or a P-256 key (ES256).  Returns a
 * palloc'd compact token, or NULL with *error set.
 */
static char *
signing_input(json_t *header, json_t *claims)
{
	char	   *h = mm_json_dump(header);
	char	   *c = mm_json_dump(claims);

	return psprintf("%s.%s",
					mm_base64((const uint8 *) h, strlen(h), true),
					mm_base64((const uint8 *) c, strlen(c), true));
}

/*
 * Build an HS256 JWT from a header and claims object (both consumed),
 * keyed with the bytes of secret as they are.
 */
char *
mm_jwt_sign_hs256(json_t *header, json_t *claims, const char *secret)
{
	char	   *input = signing_input(header, claims);
	uint8		mac[32];

	mm_hmac_sha256((const uint8 *) secret, strlen(secret), input,
				   strlen(input), mac);
	return psprintf("%s.%s", input, mm_base64(mac, sizeof(mac), true));
}

char *
mm_jwt_sign(json_t *header, json_t *claims, EVP_PKEY *key, const char **error)
{
	char	   *input = signing_input(header, claims);
	EVP_MD_CTX *ctx;
	uint8		sig[512];
	size_t		siglen = sizeof(sig);
	bool		ec = (EVP_PKEY_base_id(key) == EVP_PKEY_EC);
	char	   *encoded;

	ctx = EVP_MD_CTX_new();
	if (ctx == NULL ||
		EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
		EVP_DigestSign(ctx, sig, &siglen, (const uint8 *) input,
					   strlen(input)) != 1)
	{
		EVP_MD_CTX_free(ctx);
		ERR_clear_error();
		*error = "signing failed";
		return NULL;
	}
	EVP_MD_CTX_free(ctx);

	if (ec)
	{
		/* DER ECDSA-Sig-Value to the JOSE form: R and S, 32 bytes each */
		const uint8 *p = sig;
		ECDSA_SIG  *es = d2i_ECDSA_SIG(NULL, &p, (long) siglen);
		const BIGNUM *r,
				   *s;
		uint8		raw[64];

		if (es == NULL)
		{
			ERR_clear_error();
			*error = "could not decode the ECDSA signature";
			return NULL;
		}
		ECDSA_SIG_get0(es, &r, &s);
		if (BN_bn2binpad(r, raw, 32) != 32 || BN_bn2binpad(s, raw + 32, 32) != 32)
		{
			ECDSA_SIG_free(es);
			*error = "ECDSA signature is not P-256 sized";
			return NULL;
		}
		ECDSA_SIG_free(es);
		encoded = mm_base64(raw, 64, true);
	}
	else
		encoded = mm_base64(sig, siglen, true);

	return psprintf("%s.%s", input, encoded);
}

/*
 * Stat path and check that it is a regular file.  Returns false with
 * *error set otherwise.
 */
static bool
stat_regular_file(const char *path, struct stat *st, const char **error)
{
	if (stat(path, st) != 0)
	{
		*error = psprintf("could not stat file \"%s\": %m", path);
		return false;
	}
	if (!S_ISREG(st->st_mode))
	{
		*error = psprintf("\"%s\" is not a regular file", path);
		return false;
	}
	return true;
}

/*
 * Check that path is a regular file the server's OS user can read, such
 * as a CA bundle.  Unlike a key file, it may be readable by others.
 */
bool
mm_check_readable_file(const char *path, const char **error)
{
	struct stat st;
	FILE	   *f;

	if (!stat_regular_file(path, &st, error))
		return false;
	f = fopen(path, "r");
	if (f == NULL)
	{
		*error = psprintf("could not open file \"%s\": %m", path);
		return false;
	}
	fclose(f);
	return true;
}

/*
 * Read a key file the way the server treats its own TLS key: it must be
 * a regular file of reasonable size, with no group or other access.
 * Returns the palloc'd contents, or NULL with *error set.  The error text
 * never quotes the file's contents.
 */
char *
mm_read_secret_file(const char *path, const char **error)
{
	struct stat st;
	FILE	   *f;
	char	   *buf;
	size_t		n;

	if (!stat_regular_file(path, &st, error))
		return NULL;
	if (st.st_mode & (S_IRWXG | S_IRWXO))
	{
		*error = psprintf("key file \"%s\" has group or world access; "
						  "it must be u=rw (0600) or less", path);
		return NULL;
	}
	if (st.st_size > 64 * 1024)
	{
		*error = psprintf("key file \"%s\" is larger than 64 kB", path);
		return NULL;
	}
	f = fopen(path, "r");
	if (f == NULL)
	{
		*error = psprintf("could not open file \"%s\": %m", path);
		return NULL;
	}
	buf = palloc(st.st_size + 1);
	n = fread(buf, 1, st.st_size, f);
	fclose(f);
	buf[n] = '\0';
	return buf;
}
