/*-------------------------------------------------------------------------
 *
 * json.c
 *	  Small helpers around jansson and random identifiers.
 *
 * Providers build request bodies with jansson and parse responses with it.
 * Everything a provider hands back is untrusted: strings are checked for
 * type and length before they reach a table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "matchmaker.h"

/*
 * Serialise a JSON value into a palloc'd string and drop the reference.
 */
char *
mm_json_dump(json_t *value)
{
	char	   *raw;
	char	   *result;

	raw = json_dumps(value, JSON_COMPACT);
	json_decref(value);
	if (raw == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not serialise a JSON request body")));
	result = pstrdup(raw);
	free(raw);
	return result;
}

/*
 * Fetch obj[key] when it is a string of 1..maxlen bytes with no NUL inside
 * (text columns cannot hold NUL).  A number is accepted too and returned in
 * its JSON spelling, since some services hand out numeric room ids.
 */
bool
mm_json_get_string(json_t *obj, const char *key, const char **value,
				   size_t maxlen)
{
	json_t	   *v;
	size_t		len;

	*value = NULL;
	if (!json_is_object(obj))
		return false;
	v = json_object_get(obj, key);
	if (json_is_integer(v))
	{
		*value = psprintf("%lld", (long long) json_integer_value(v));
		return true;
	}
	if (!json_is_string(v))
		return false;
	len = json_string_length(v);
	if (len == 0 || len > maxlen || strlen(json_string_value(v)) != len)
		return false;
	*value = json_string_value(v);
	return true;
}

/*
 * Copy at most maxlen bytes of the UTF-8 string s into a palloc'd string,
 * without cutting a character in two: a provider's message shortened for
 * last_error must stay valid text.
 */
char *
mm_clip_utf8(const char *s, size_t maxlen)
{
	size_t		len = strnlen(s, maxlen + 1);
	char	   *result;

	if (len > maxlen)
	{
		/* drop the character that s[maxlen] belongs to */
		len = maxlen;
		while (len > 0 && ((unsigned char) s[len] & 0xc0) == 0x80)
			len--;
	}
	result = palloc(len + 1);
	memcpy(result, s, len);
	result[len] = '\0';
	return result;
}

/*
 * Copy len bytes of s into a palloc'd string with every byte outside
 * printable ASCII replaced by a space.  Text quoted from a response need
 * not be valid UTF-8, and jansson's error messages quote the bytes near
 * the error, but an error text ends up in a text column.
 */
char *
mm_printable_text(const char *s, size_t len)
{
	char	   *result = palloc(len + 1);

	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		result[i] = (c < 0x20 || c >= 0x7f) ? ' ' : (char) c;
	}
	result[len] = '\0';
	return result;
}

/*
 * A random token of nbytes strong random bytes, as lowercase hex.
 */
char *
mm_random_token(int nbytes)
{
	uint8		buf[64];
	char	   *hex;
	static const char digits[] = "0123456789abcdef";

	Assert(nbytes > 0 && nbytes <= (int) sizeof(buf));
	if (!pg_strong_random(buf, nbytes))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes")));
	hex = palloc(nbytes * 2 + 1);
	for (int i = 0; i < nbytes; i++)
	{
		hex[i * 2] = digits[buf[i] >> 4];
		hex[i * 2 + 1] = digits[buf[i] & 0x0f];
	}
	hex[nbytes * 2] = '\0';
	return hex;
}

/*
 * A random positive room id that survives a round trip through a JSON
 * double: 1 .. 2^53 - 1.
 */
int64
mm_random_room_id(void)
{
	uint64		v;

	do
	{
		if (!pg_strong_random(&v, sizeof(v)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random bytes")));
		v &= (UINT64CONST(1) << 53) - 1;
	} while (v == 0);
	return (int64) v;
}
