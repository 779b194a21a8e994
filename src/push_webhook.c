/*-------------------------------------------------------------------------
 *
 * push_webhook.c
 *	  Push provider "webhook": POST each notification to push_url.
 *
 * Body {"to": "<push token>", "data": {...}}; the webhook-id header
 * carries the outbox id, the same on every retry, so that a receiver can
 * drop a delivery it has already seen.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "matchmaker.h"

static void
webhook_answer(const MMHttpResponse *resp, void *arg)
{
	MMPushJob  *job = (MMPushJob *) arg;

	mm_http_classify(resp, &job->outcome);
	mm_push_done(job);
}

static void
webhook_start(MMPushJob *job)
{
	json_t	   *data;
	json_t	   *body;
	json_error_t jerr;
	char		idheader[64];
	const char *headers[2];

	data = json_loads(job->payload, 0, &jerr);
	if (data == NULL)
	{
		job->outcome.result = MM_FAIL;
		job->outcome.error = psprintf("outbox payload is not valid JSON: %s",
									  jerr.text);
		job->outcome.retry_after_ms = -1;
		mm_push_done(job);
		return;
	}
	body = json_pack("{s:s, s:o}", "to", job->push_token, "data", data);

	snprintf(idheader, sizeof(idheader), "webhook-id: " INT64_FORMAT,
			 job->outbox_id);
	headers[0] = idheader;
	headers[1] = NULL;
	mm_http_post(mm_push_url, mm_json_dump(body), headers, webhook_answer, job);
}

const MMPushProvider mm_push_webhook = {
	.name = "webhook",
	.start = webhook_start,
};
