/* Private to core: what job.c and estimate.c share. */
#ifndef TB_CORE_JOBINT_H
#define TB_CORE_JOBINT_H

#include "trainbus/job.h"

/* Units of the model's output: the last Dense layer's, or the input width
 * (the training set's features, 0 before it is loaded) without one. */
int tb__job_n_outputs(const tb_job_t *job);
/* The estimate with the job's data sets as loaded (their exact shapes), for
 * what is still to be allocated. 0 or TB_EINVAL. */
int tb__job_estimate_loaded(const tb_job_t *job, tb_job_estimate_t *est);
/* Writes the over-budget message ("<origin or job name>: <when>needs an
 * estimated ...") and returns TB_ERANGE. */
int tb__job_over_budget(const tb_job_t *job, const tb_job_estimate_t *est, const char *when,
                        tb_err_t *err);

#endif
