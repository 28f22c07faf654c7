def my_iw(log_w, k):
    # ln (1/k) sum_j w_j over the first k draws, computed stably as a logsumexp
    return torch.logsumexp(log_w[:k], dim=0) - math.log(k)
