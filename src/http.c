/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The worker's HTTP engine: one libcurl multi handle, many requests.
 *
 * Requests are started with mm_http_post() and finish through a callback,
 * so a slow provider occupies a slot, not the worker.  The multi handle keeps
 * connections open between requests to the same host.
 *
 * libcurl tells us which sockets it wants watched (socket callback) and
 * when it wants to be called without socket activity (timer callback).
 * The worker adds those sockets to the same WaitEventSet that carries its
 * latch and its LISTEN connection, so one wait serves everything.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "matchmaker.h"

typedef struct MMHttpRequest
{
	CURL	   *easy;
	struct curl_slist *headers;
	char	   *resp;			/* malloc'd: filled inside curl callbacks */
	size_t		resp_len;
	size_t		resp_cap;
	bool		too_large;
	int			retry_after_ms;
	char		errbuf[CURL_ERROR_SIZE];
	MMHttpDone	done;
	void	   *arg;
	MemoryContext cxt;			/* where the callback allocates */
} MMHttpRequest;

typedef struct MMSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} MMSocket;

static CURLM *multi = NULL;
static int	inflight = 0;
static TimestampTz timer_deadline = 0;	/* 0: no timer requested */

/* sockets libcurl requested to watch; about two per request slot */
static MMSocket *sockets = NULL;
static int	nsockets = 0;
static int	maxsockets = 0;

static int
socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < nsockets; i++)
		if (sockets[i].fd == fd)
			break;

	if (what == CURL_POLL_REMOVE)
	{
		if (i < nsockets)
			sockets[i] = sockets[--nsockets];
		return 0;
	}

	if (i == nsockets)
	{
		if (nsockets == maxsockets)
		{
			int			newmax = maxsockets ? maxsockets * 2 : 64;
			MMSocket   *grown = realloc(sockets, newmax * sizeof(MMSocket));

			if (grown == NULL)
				return -1;
			sockets = grown;
			maxsockets = newmax;
		}
		nsockets++;
	}
	sockets[i].fd = fd;
	sockets[i].what = what;
	return 0;
}

static int
timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	if (timeout_ms < 0)
		timer_deadline = 0;
	else
		timer_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 timeout_ms);
	return 0;
}

/*
 * Collect the body, stopping the transfer past MM_MAX_RESPONSE.  This runs
 * inside libcurl, so it must not palloc or ereport.
 */
static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	MMHttpRequest *req = (MMHttpRequest *) userp;
	size_t		n = size * nmemb;

	if (req->resp_len + n + 1 > MM_MAX_RESPONSE)
	{
		req->too_large = true;
		return 0;				/* makes curl stop with CURLE_WRITE_ERROR */
	}
	if (req->resp_len + n + 1 > req->resp_cap)
	{
		size_t		cap = Max(req->resp_cap * 2, req->resp_len + n + 1);
		char	   *grown;

		cap = Max(cap, 1024);
		grown = realloc(req->resp, cap);
		if (grown == NULL)
			return 0;
		req->resp = grown;
		req->resp_cap = cap;
	}
	memcpy(req->resp + req->resp_len, data, n);
	req->resp_len += n;
	req->resp[req->resp_len] = '\0';
	return n;
}

/*
 * Parse the value of a Retry-After header: delta-seconds or an HTTP date
 * (RFC 9110 10.2.3), capped at one day.  value need not be NUL-terminated.
 * Returns milliseconds from now, or -1 when absent or unreadable.
 */
int
mm_http_parse_retry_after(const char *value, size_t len)
{
	char		buf[128];
	char	   *end;
	long		secs;

	while (len > 0 && (value[len - 1] == '\r' || value[len - 1] == '\n' ||
					   value[len - 1] == ' ' || value[len - 1] == '\t'))
		len--;
	while (len > 0 && (*value == ' ' || *value == '\t'))
		value++, len--;
	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, value, len);
	buf[len] = '\0';

	if (buf[0] >= '0' && buf[0] <= '9')
	{
		errno = 0;
		secs = strtol(buf, &end, 10);
		if (*end != '\0')
			return -1;
		if (errno == ERANGE)
			secs = LONG_MAX;	/* capped below */
	}
	else
	{
		time_t		when = curl_getdate(buf, NULL);

		if (when == -1)
			return -1;
		secs = (long) (when - time(NULL));
		if (secs < 0)
			secs = 0;
	}
	/* cap the requested delay at one day */
	secs = Min(secs, 86400L);
	return (int) (secs * 1000);
}

static size_t
header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	MMHttpRequest *req = (MMHttpRequest *) userp;
	size_t		n = size * nmemb;
	static const char name[] = "retry-after:";

	if (n > sizeof(name) - 1 &&
		pg_strncasecmp(data, name, sizeof(name) - 1) == 0)
		req->retry_after_ms =
			mm_http_parse_retry_after(data + sizeof(name) - 1,
									  n - (sizeof(name) - 1));
	return n;
}

void
mm_http_init(void)
{
	if (curl_global_init(CURL_GLOBAL_ALL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not initialise libcurl")));
	multi = curl_multi_init();
	if (multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	/*
	 * No per-host cap: a request queued inside libcurl would spend its
	 * timeouts waiting for a connection.  matchmaker.max_inflight is the
	 * limit instead.
	 */
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 1000L);
}

/*
 * Start a POST of a JSON body.  headers is a NULL-terminated list of
 * "Name: value" strings besides Content-Type.  done runs once, from
 * mm_http_perform(), whatever happens, in the memory context that was
 * current here.
 */
void
mm_http_post(const char *url, const char *body, const char *const *headers,
			 MMHttpDone done, void *arg)
{
	MMHttpSpec	spec = {0};

	spec.url = url;
	spec.body = body;
	spec.headers = headers;
	mm_http_request(&spec, done, arg);
}

/*
 * Start a POST as described by spec; see mm_http_post().
 */
void
mm_http_request(const MMHttpSpec *spec, MMHttpDone done, void *arg)
{
	MMHttpRequest *req;
	CURL	   *easy;
	const char *const *headers = spec->headers;
	char	   *content_type;

	req = MemoryContextAllocZero(mm_job_context, sizeof(MMHttpRequest));
	req->retry_after_ms = -1;
	req->done = done;
	req->arg = arg;
	req->cxt = CurrentMemoryContext;

	easy = curl_easy_init();
	if (easy == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
	req->easy = easy;

	content_type = psprintf("Content-Type: %s",
							spec->content_type ? spec->content_type :
							"application/json");
	req->headers = curl_slist_append(NULL, content_type);
	req->headers = curl_slist_append(req->headers, "Expect:");
	for (int i = 0; headers != NULL && headers[i] != NULL; i++)
		req->headers = curl_slist_append(req->headers, headers[i]);

	curl_easy_setopt(easy, CURLOPT_URL, spec->url);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) mm_connect_timeout);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) mm_request_timeout);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, req->headers);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long) strlen(spec->body));
	curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, spec->body);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, req);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, req->errbuf);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, req);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "matchmaker/0.1");
	curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
	if (spec->http2)
	{
		/* cleartext HTTP/2 only with prior knowledge, as for local fakes */
		curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
						 pg_strncasecmp(spec->url, "http:", 5) == 0 ?
						 (long) CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE :
						 (long) CURL_HTTP_VERSION_2TLS);
		/* share one connection between concurrent requests */
		curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 1L);

		/*
		 * NOTE: libcurl before 8.0.0 breaks the second request on a reused
		 * cleartext HTTP/2 connection ("Error in the HTTP2 framing layer"),
		 * so there each such request gets a connection of its own.  Only
		 * local test servers speak cleartext HTTP/2; TLS connections are
		 * reused as usual.
		 */
		if (pg_strncasecmp(spec->url, "http:", 5) == 0 &&
			curl_version_info(CURLVERSION_NOW)->version_num < 0x080000)
		{
			curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
			curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
			curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 0L);
		}
	}

	if (curl_multi_add_handle(multi, easy) != CURLM_OK)
	{
		curl_slist_free_all(req->headers);
		curl_easy_cleanup(easy);
		pfree(req);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not start an HTTP request to \"%s\"", spec->url)));
	}
	pfree(content_type);
	inflight++;
}

int
mm_http_inflight(void)
{
	return inflight;
}

/* How many sockets libcurl wants watched right now. */
int
mm_http_socket_count(void)
{
	return nsockets;
}

/*
 * Add the sockets libcurl watches to a wait event set.  Returns how many.
 */
int
mm_http_wait_setup(void *setp)
{
	WaitEventSet *set = (WaitEventSet *) setp;

	for (int i = 0; i < nsockets; i++)
	{
		uint32		events = 0;

		if (sockets[i].what & CURL_POLL_IN)
			events |= WL_SOCKET_READABLE;
		if (sockets[i].what & CURL_POLL_OUT)
			events |= WL_SOCKET_WRITEABLE;
		if (events != 0)
			AddWaitEventToSet(set, events, sockets[i].fd, NULL,
							  (void *) &mm_http_socket_ready);
	}
	return nsockets;
}

/*
 * Milliseconds until libcurl wants a call without socket activity, or -1.
 */
long
mm_http_timeout_ms(void)
{
	TimestampTz now;

	if (timer_deadline == 0)
		return -1;
	now = GetCurrentTimestamp();
	if (now >= timer_deadline)
		return 0;
	return (long) ((timer_deadline - now + 999) / 1000);
}

static void
finish(CURL *easy, CURLcode code)
{
	MMHttpRequest *req;
	MMHttpResponse resp;
	MemoryContext oldcxt;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &req);
	curl_multi_remove_handle(multi, easy);
	inflight--;

	memset(&resp, 0, sizeof(resp));
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &resp.status);
	resp.curl_code = (int) code;
	if (code == CURLE_WRITE_ERROR && req->too_large)
	{
		/*
		 * The status line came; only the body was cut short.  Judge by the
		 * status, and let a provider that needs the body find it invalid.
		 */
		resp.curl_code = CURLE_OK;
		resp.truncated = true;
	}
	else if (code != CURLE_OK)
	{
		if (req->errbuf[0] != '\0')
			resp.curl_error = req->errbuf;
		else
			resp.curl_error = curl_easy_strerror(code);
	}
	resp.body = req->resp ? req->resp : "";
	resp.body_len = req->resp_len;
	resp.retry_after_ms = req->retry_after_ms;

	oldcxt = MemoryContextSwitchTo(req->cxt);
	PG_TRY();
	{
		req->done(&resp, req->arg);
	}
	PG_FINALLY();
	{
		MemoryContextSwitchTo(oldcxt);
		curl_slist_free_all(req->headers);
		curl_easy_cleanup(easy);
		free(req->resp);
		pfree(req);
	}
	PG_END_TRY();
}

/*
 * Tell libcurl that one of its sockets fired in the last wait.
 */
void
mm_http_socket_ready(int fd, uint32 wl_events)
{
	int			running;
	int			mask = 0;

	if (wl_events & WL_SOCKET_READABLE)
		mask |= CURL_CSELECT_IN;
	if (wl_events & WL_SOCKET_WRITEABLE)
		mask |= CURL_CSELECT_OUT;
	curl_multi_socket_action(multi, (curl_socket_t) fd, mask, &running);
}

/*
 * Run libcurl's timer if it is due, then hand every finished request to
 * its callback.
 */
void
mm_http_perform(void)
{
	int			running;
	CURLMsg    *msg;
	int			left;

	if (multi == NULL)
		return;

	if (timer_deadline != 0 && GetCurrentTimestamp() >= timer_deadline)
	{
		timer_deadline = 0;
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		if (msg->msg == CURLMSG_DONE)
			finish(msg->easy_handle, msg->data.result);
	}
}

/*
 * Sort a finished HTTP exchange into success, retry or give up.
 * Timeouts, connection errors, 408, 429 and 5xx are worth another try;
 * other 4xx mean the request itself is wrong.
 */
void
mm_http_classify(const MMHttpResponse *resp, MMOutcome *out)
{
	out->retry_after_ms = resp->retry_after_ms;
	out->error = NULL;
	out->token_dead = false;

	if (resp->curl_code != CURLE_OK)
	{
		out->error = psprintf("%s", resp->curl_error);
		/*
		 * Every transport error is retried, a bad URL too: it is a
		 * setting an operator can fix before attempts run out.
		 */
		out->result = MM_RETRY;
		return;
	}

	if (resp->status >= 200 && resp->status < 300)
	{
		out->result = MM_OK;
		return;
	}

	{
		size_t		n = Min(resp->body_len, 200);

		out->error = psprintf("HTTP %ld%s%s", resp->status,
							  n > 0 ? ": " : "",
							  mm_printable_text(resp->body, n));
	}

	if (resp->status == 408 || resp->status == 429 || resp->status >= 500)
		out->result = MM_RETRY;
	else
		out->result = MM_FAIL;
}
