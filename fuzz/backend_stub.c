/*-------------------------------------------------------------------------
 *
 * backend_stub.c
 *	  The few PostgreSQL backend symbols the fuzzed matchmaker code calls.
 *
 * The fuzz targets link the product's own C files (src/) into a standalone
 * program, without a server.  This file supplies what those files take
 * from the backend: memory contexts and palloc, psprintf, a StringInfo
 * subset, ereport/elog, the GUC check-hook message, text datums and the
 * clock.  Formatting (pg_snprintf) and strong random bytes come from the
 * server's own libpgport.a.
 *
 * Memory contexts keep every chunk on a list and give it back to malloc
 * on reset or delete, so AddressSanitizer tracks each chunk as a separate
 * allocation: an overrun of a palloc'd buffer or a use after a context
 * reset is reported at once.
 *
 * ereport(ERROR) longjmps to PG_exception_stack, as in the backend: the
 * harness sets it up like PG_TRY, so a raised error is an ordinary end of
 * one input.  Lower levels are formatted (which checks their arguments)
 * and dropped.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/time.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "harness.h"

/* one palloc'd chunk; the caller's memory follows the header */
typedef struct StubChunk
{
	struct StubContext *cxt;
	struct StubChunk *prev;
	struct StubChunk *next;
	Size		size;
} StubChunk;

#define CHUNK_HEADER	MAXALIGN(sizeof(StubChunk) > 32 ? sizeof(StubChunk) : 32)

typedef struct StubContext
{
	MemoryContextData base;		/* only parent and the child links are used */
	StubChunk  *chunks;
} StubContext;

static StubContext top_context;

MemoryContext TopMemoryContext = (MemoryContext) &top_context;
MemoryContext CurrentMemoryContext = (MemoryContext) &top_context;

sigjmp_buf *PG_exception_stack = NULL;
ErrorContextCallback *error_context_stack = NULL;
char	   *GUC_check_errdetail_string = NULL;
int			MyProcPid = 4242;

/* the message and level of the ereport being built */
static int	pending_elevel;
static char *pending_message;

int			stub_error_count = 0;
const char *stub_last_error = NULL;
int64		stub_clock_offset_ms = 0;

/* Free every chunk of a context and delete its children. */
static void
context_free_contents(StubContext *cxt)
{
	while (cxt->base.firstchild != NULL)
		MemoryContextDelete(cxt->base.firstchild);
	while (cxt->chunks != NULL)
	{
		StubChunk  *chunk = cxt->chunks;

		cxt->chunks = chunk->next;
		free(chunk);
	}
}

MemoryContext
AllocSetContextCreateInternal(MemoryContext parent, const char *name,
							  Size minContextSize, Size initBlockSize,
							  Size maxBlockSize)
{
	StubContext *cxt = calloc(1, sizeof(StubContext));

	if (cxt == NULL)
		abort();
	cxt->base.name = name;
	cxt->base.parent = parent;
	cxt->base.nextchild = parent->firstchild;
	if (parent->firstchild)
		parent->firstchild->prevchild = (MemoryContext) cxt;
	parent->firstchild = (MemoryContext) cxt;
	return (MemoryContext) cxt;
}

void
MemoryContextReset(MemoryContext context)
{
	context_free_contents((StubContext *) context);
}

void
MemoryContextDelete(MemoryContext context)
{
	MemoryContext parent = context->parent;

	context_free_contents((StubContext *) context);
	if (context->prevchild)
		context->prevchild->nextchild = context->nextchild;
	else if (parent)
		parent->firstchild = context->nextchild;
	if (context->nextchild)
		context->nextchild->prevchild = context->prevchild;
	if (CurrentMemoryContext == context)
		CurrentMemoryContext = parent;
	free(context);
}

void *
MemoryContextAlloc(MemoryContext context, Size size)
{
	StubContext *cxt = (StubContext *) context;
	StubChunk  *chunk;

	if (!AllocSizeIsValid(size))
		elog(ERROR, "invalid memory alloc request size %zu", size);
	chunk = malloc(CHUNK_HEADER + size);
	if (chunk == NULL)
		abort();
	chunk->cxt = cxt;
	chunk->size = size;
	chunk->prev = NULL;
	chunk->next = cxt->chunks;
	if (cxt->chunks)
		cxt->chunks->prev = chunk;
	cxt->chunks = chunk;
	return (char *) chunk + CHUNK_HEADER;
}

void *
MemoryContextAllocZero(MemoryContext context, Size size)
{
	void	   *p = MemoryContextAlloc(context, size);

	memset(p, 0, size);
	return p;
}

void *
palloc(Size size)
{
	return MemoryContextAlloc(CurrentMemoryContext, size);
}

void *
palloc0(Size size)
{
	return MemoryContextAllocZero(CurrentMemoryContext, size);
}

void
pfree(void *pointer)
{
	StubChunk  *chunk = (StubChunk *) ((char *) pointer - CHUNK_HEADER);
	StubContext *cxt = chunk->cxt;

	if (chunk->prev)
		chunk->prev->next = chunk->next;
	else
		cxt->chunks = chunk->next;
	if (chunk->next)
		chunk->next->prev = chunk->prev;
	free(chunk);
}

void *
repalloc(void *pointer, Size size)
{
	StubChunk  *chunk = (StubChunk *) ((char *) pointer - CHUNK_HEADER);
	void	   *copy = MemoryContextAlloc((MemoryContext) chunk->cxt, size);

	memcpy(copy, pointer, Min(size, chunk->size));
	pfree(pointer);
	return copy;
}

char *
MemoryContextStrdup(MemoryContext context, const char *string)
{
	size_t		len = strlen(string) + 1;
	char	   *copy = MemoryContextAlloc(context, len);

	memcpy(copy, string, len);
	return copy;
}

char *
pstrdup(const char *in)
{
	return MemoryContextStrdup(CurrentMemoryContext, in);
}

/* Format into a palloc'd string of the exact size. */
static char *
format_va(const char *fmt, va_list args)
{
	va_list		copy;
	int			len;
	char	   *result;

	va_copy(copy, args);
	len = pg_vsnprintf(NULL, 0, fmt, copy);
	va_end(copy);
	if (len < 0)
		elog(ERROR, "invalid format string \"%s\"", fmt);
	result = palloc(len + 1);
	pg_vsnprintf(result, len + 1, fmt, args);
	return result;
}

/* Format the variable arguments that follow fmt into dest. */
#define FORMAT_INTO(dest, fmt) \
	do { \
		va_list		args_; \
		\
		va_start(args_, fmt); \
		(dest) = format_va(fmt, args_); \
		va_end(args_); \
	} while (0)

char *
psprintf(const char *fmt,...)
{
	char	   *result;

	FORMAT_INTO(result, fmt);
	return result;
}

void
initStringInfo(StringInfo str)
{
	str->maxlen = 1024;
	str->data = palloc(str->maxlen);
	resetStringInfo(str);
}

void
resetStringInfo(StringInfo str)
{
	str->data[0] = '\0';
	str->len = 0;
	str->cursor = 0;
}

void
enlargeStringInfo(StringInfo str, int needed)
{
	int			newlen = str->maxlen;

	if (needed < 0 || (Size) needed >= MaxAllocSize - (Size) str->len)
		elog(ERROR, "out of memory: cannot enlarge string buffer by %d bytes",
			 needed);
	needed += str->len + 1;
	while (needed > newlen)
		newlen = 2 * newlen;
	if (newlen > (int) MaxAllocSize)
		newlen = (int) MaxAllocSize;
	if (newlen > str->maxlen)
	{
		str->data = repalloc(str->data, newlen);
		str->maxlen = newlen;
	}
}

void
appendBinaryStringInfo(StringInfo str, const char *data, int datalen)
{
	enlargeStringInfo(str, datalen);
	memcpy(str->data + str->len, data, datalen);
	str->len += datalen;
	str->data[str->len] = '\0';
}

void
appendStringInfoString(StringInfo str, const char *s)
{
	appendBinaryStringInfo(str, s, strlen(s));
}

void
appendStringInfoChar(StringInfo str, char ch)
{
	appendBinaryStringInfo(str, &ch, 1);
}

/* ---- ereport and elog ---- */

bool
errstart(int elevel, const char *domain)
{
	pending_elevel = elevel;
	pending_message = NULL;
	return true;
}

bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}

int
errcode(int sqlerrcode)
{
	return 0;
}

int
errcode_for_socket_access(void)
{
	return 0;
}

int
errmsg(const char *fmt,...)
{
	FORMAT_INTO(pending_message, fmt);
	return 0;
}

int
errmsg_internal(const char *fmt,...)
{
	FORMAT_INTO(pending_message, fmt);
	return 0;
}

/* details and hints are formatted, which checks their arguments, and dropped */
int
errdetail(const char *fmt,...)
{
	char	   *detail;

	FORMAT_INTO(detail, fmt);
	pfree(detail);
	return 0;
}

int
errhint(const char *fmt,...)
{
	char	   *hint;

	FORMAT_INTO(hint, fmt);
	pfree(hint);
	return 0;
}

/*
 * End an ereport: an ERROR jumps to the innermost PG_TRY (the harness
 * sets one up around each input), anything lower is dropped.
 */
void
errfinish(const char *filename, int lineno, const char *funcname)
{
	if (pending_elevel < ERROR)
		return;
	if (pending_elevel > ERROR || PG_exception_stack == NULL)
	{
		fprintf(stderr, "%s:%d: unexpected %s: %s\n", filename, lineno,
				pending_elevel > ERROR ? "FATAL" : "ERROR outside PG_TRY",
				pending_message ? pending_message : "(no message)");
		abort();
	}
	stub_error_count++;
	stub_last_error = pending_message;
	siglongjmp(*PG_exception_stack, 1);
}

void
pg_re_throw(void)
{
	if (PG_exception_stack == NULL)
		abort();
	siglongjmp(*PG_exception_stack, 1);
}

/* GUC_check_errdetail formats in two steps; only the second one matters. */
void
pre_format_elog_string(int errnumber, const char *domain)
{
}

char *
format_elog_string(const char *fmt,...)
{
	char	   *result;

	FORMAT_INTO(result, fmt);
	return result;
}

/* ---- text datums ---- */

struct varlena *
pg_detoast_datum_packed(struct varlena *datum)
{
	if (VARATT_IS_EXTENDED(datum) && !VARATT_IS_SHORT(datum))
		elog(ERROR, "toasted datums are not supported here");
	return datum;
}

text *
cstring_to_text(const char *s)
{
	size_t		len = strlen(s);
	text	   *result = palloc(len + VARHDRSZ);

	SET_VARSIZE(result, len + VARHDRSZ);
	memcpy(VARDATA(result), s, len);
	return result;
}

char *
text_to_cstring(const text *t)
{
	text	   *tunpacked = (text *) pg_detoast_datum_packed((struct varlena *) t);
	int			len = VARSIZE_ANY_EXHDR(tunpacked);
	char	   *result = palloc(len + 1);

	memcpy(result, VARDATA_ANY(tunpacked), len);
	result[len] = '\0';
	return result;
}

/* ---- time ---- */

/*
 * The current time, moved by stub_clock_offset_ms so that a target can
 * make a timer fall due without waiting.
 */
TimestampTz
GetCurrentTimestamp(void)
{
	struct timeval tp;
	TimestampTz result;

	gettimeofday(&tp, NULL);
	result = (TimestampTz) tp.tv_sec -
		((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY);
	result = (result * USECS_PER_SEC) + tp.tv_usec;
	return result + stub_clock_offset_ms * 1000;
}

bool
TimestampDifferenceExceeds(TimestampTz start_time, TimestampTz stop_time,
						   int msec)
{
	return stop_time - start_time >= (TimestampTz) msec * 1000;
}

/* The HTTP engine's socket hookup is never reached: requests are stubbed. */
int
AddWaitEventToSet(WaitEventSet *set, uint32 events, pgsocket fd,
				  Latch *latch, void *user_data)
{
	abort();
}
