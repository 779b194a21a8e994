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
 * Its sockets go into an epoll set of their own, and the worker adds that
 * one descriptor to the WaitEventSet that carries its latch and its LISTEN
 * connection, so one wait serves everything.
 *
 * Every request speaks only http or https, never follows a redirect, and
 * verifies the peer's TLS certificate and host name against the system's
 * CA bundle or matchmaker.ca_file.  Error texts pass through
 * mm_redact_secrets() before they are logged or stored.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/epoll.h>

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
	char	   *credential;		/* Authorization header's token, or NULL */
	MMHttpDone	done;
	void	   *arg;
	MemoryContext cxt;			/* where the callback allocates */
} MMHttpRequest;

static CURLM *multi = NULL;
static int	inflight = 0;
static TimestampTz timer_deadline = 0;	/* 0: no timer requested */

/*
 * Credential of the request whose callback is running, so that
 * mm_redact_secrets() can remove it from a response that echoes it.
 */
static const char *answering_credential = NULL;

/*
 * The sockets libcurl watches live in one epoll set of their own, changed
 * one socket at a time from the socket callback.  The worker's wait event
 * set watches only that epoll descriptor, so its size and the cost of
 * building it do not grow with the requests in flight.
 */
static int	epoll_fd = -1;
static int	nsockets = 0;

/* what curl_multi_assign() attaches to a socket that is in the epoll set */
static int	registered;

static int
socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	if (what == CURL_POLL_REMOVE)
	{
		if (socketp != NULL)
		{
			/* the socket may already be closed, which removed it too */
			(void) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, NULL);
			curl_multi_assign(multi, fd, NULL);
			nsockets--;
		}
		return 0;
	}

	memset(&ev, 0, sizeof(ev));
	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;
	ev.data.fd = fd;
	if (socketp != NULL)
		return epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev) == 0 ? 0 : -1;
	if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0)
		return -1;
	curl_multi_assign(multi, fd, &registered);
	nsockets++;
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
	int64		ms;

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
		struct timeval now;

		if (when == -1)
			return -1;

		/*
		 * Count from now in milliseconds: whole seconds of now would read
		 * a date 2 s ahead as up to 3 s away.
		 */
		gettimeofday(&now, NULL);
		if (when <= now.tv_sec)
			return 0;
		if (when - now.tv_sec > 86400)
			return 86400 * 1000;
		ms = (int64) (when - now.tv_sec) * 1000 - now.tv_usec / 1000;
		return (int) Max(ms, 0);
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
	epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (epoll_fd < 0)
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("could not create an epoll set for libcurl's sockets: %m")));
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
	/* idle connections kept for reuse, as many as max_inflight can be */
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 4096L);
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
 * Restrict a handle to http and https, refuse redirects and require a
 * verified TLS peer.  Returns the first option libcurl rejected, or
 * CURLE_OK.
 */
static CURLcode
set_security_options(CURL *easy)
{
	CURLcode	rc = CURLE_OK;

#if LIBCURL_VERSION_NUM >= 0x075500
	rc = curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
	rc = curl_easy_setopt(easy, CURLOPT_PROTOCOLS,
						  (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS,
							  (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif

	/*
	 * A redirect could send the request, with its credentials, to a host
	 * that no setting names.  A 3xx response fails instead, as
	 * mm_http_classify() decides.
	 */
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(easy, CURLOPT_MAXREDIRS, 0L);

	/* libcurl's defaults, set anyway so that nothing can turn them off */
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (rc == CURLE_OK && mm_ca_file != NULL && mm_ca_file[0] != '\0')
		rc = curl_easy_setopt(easy, CURLOPT_CAINFO, mm_ca_file);
	return rc;
}

/*
 * Keep the token of an Authorization header ("Bearer <token>"), so that
 * an error text quoting it can be redacted.
 */
static void
note_credential(MMHttpRequest *req, const char *header)
{
	static const char name[] = "authorization:";
	const char *token;

	if (pg_strncasecmp(header, name, sizeof(name) - 1) != 0)
		return;
	token = strrchr(header, ' ');
	token = token ? token + 1 : header + sizeof(name) - 1;
	if (*token != '\0')
		req->credential = MemoryContextStrdup(mm_job_context, token);
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
	{
		req->headers = curl_slist_append(req->headers, headers[i]);
		note_credential(req, headers[i]);
	}

	if (set_security_options(easy) != CURLE_OK)
	{
		curl_slist_free_all(req->headers);
		curl_easy_cleanup(easy);
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("libcurl rejected the TLS, protocol or redirect options"),
				 errdetail("libcurl %s is in use.", curl_version_info(CURLVERSION_NOW)->version)));
	}
	curl_easy_setopt(easy, CURLOPT_URL, spec->url);
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
		if (req->credential)
			pfree(req->credential);
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

/* How many wait events mm_http_wait_setup() adds. */
int
mm_http_socket_count(void)
{
	return 1;
}

/*
 * Add the epoll set of libcurl's sockets to a wait event set, as one
 * socket that is readable when any of them is ready.  Returns how many
 * sockets libcurl watches.
 */
int
mm_http_wait_setup(void *setp)
{
	WaitEventSet *set = (WaitEventSet *) setp;

	if (nsockets > 0)
		AddWaitEventToSet(set, WL_SOCKET_READABLE, epoll_fd, NULL,
						  (void *) &mm_http_socket_ready);
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
	if (resp.status >= 300 && resp.status < 400)
		curl_easy_getinfo(easy, CURLINFO_REDIRECT_URL, &resp.redirect_url);

	oldcxt = MemoryContextSwitchTo(req->cxt);
	answering_credential = req->credential;
	PG_TRY();
	{
		req->done(&resp, req->arg);
	}
	PG_FINALLY();
	{
		answering_credential = NULL;
		MemoryContextSwitchTo(oldcxt);
		curl_slist_free_all(req->headers);
		curl_easy_cleanup(easy);
		free(req->resp);
		if (req->credential)
			pfree(req->credential);
		pfree(req);
	}
	PG_END_TRY();
}

/*
 * Tell libcurl which of its sockets are ready, after the wait found the
 * epoll set readable.
 */
void
mm_http_socket_ready(void)
{
	struct epoll_event evs[64];
	int			n;

	n = epoll_wait(epoll_fd, evs, lengthof(evs), 0);
	for (int i = 0; i < n; i++)
	{
		int			running;
		int			mask = 0;

		if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			mask |= CURL_CSELECT_IN;
		if (evs[i].events & (EPOLLOUT | EPOLLERR))
			mask |= CURL_CSELECT_OUT;
		if (evs[i].events & EPOLLERR)
			mask |= CURL_CSELECT_ERR;
		curl_multi_socket_action(multi, (curl_socket_t) evs[i].data.fd,
								 mask, &running);
	}
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

	if (resp->status >= 300 && resp->status < 400)
	{
		out->error = psprintf("HTTP %ld: redirect to \"%.200s\" not followed; set the provider's final URL",
							  resp->status,
							  resp->redirect_url ? resp->redirect_url : "");
		out->result = MM_FAIL;
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

/*
 * Return a copy of text, allocated in cxt, with every secret it contains
 * replaced by "[redacted]".  The secrets are the webhook secret, the Agora
 * certificate, the LiveKit API secret, and the Authorization token of the
 * request whose response is being handled (an FCM access token, an APNs
 * or LiveKit JWT), which a peer may echo in an error body.  The key files' contents
 * never reach an error text, so they need no redaction.
 *
 * XXX: a secret cut short anywhere but at the end of text, as by the
 * "%.50s" of a provider's error code, is not found.
 */
char *
mm_redact_secrets(MemoryContext cxt, const char *text)
{
	const char *secrets[4];
	StringInfoData buf;
	const char *p;

	if (text == NULL)
		return NULL;

	/* a whsec_ secret is redacted from its key part on */
	secrets[0] = mm_webhook_secret;
	if (secrets[0] != NULL && strncmp(secrets[0], "whsec_", 6) == 0)
		secrets[0] += 6;
	secrets[1] = mm_agora_app_certificate;
	secrets[2] = mm_livekit_api_secret;
	secrets[3] = answering_credential;

	initStringInfo(&buf);
	p = text;
	while (*p != '\0')
	{
		size_t		skip = 0;

		for (int i = 0; i < lengthof(secrets); i++)
		{
			size_t		len = secrets[i] ? strlen(secrets[i]) : 0;
			size_t		remaining;

			if (len == 0)
				continue;
			if (strncmp(p, secrets[i], len) == 0)
			{
				skip = len;
				break;
			}

			/*
			 * An error keeps only the start of a long body, so the text
			 * may end inside a secret: redact a tail of 8 or more bytes
			 * that starts it.
			 */
			remaining = strlen(p);
			if (remaining >= 8 && remaining < len &&
				strncmp(p, secrets[i], remaining) == 0)
			{
				skip = remaining;
				break;
			}
		}
		if (skip > 0)
		{
			appendStringInfoString(&buf, "[redacted]");
			p += skip;
		}
		else
			appendStringInfoChar(&buf, *p++);
	}

	p = MemoryContextStrdup(cxt, buf.data);
	pfree(buf.data);
	return (char *) p;
}
