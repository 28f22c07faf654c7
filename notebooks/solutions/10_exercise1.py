fresh = new_model()
initialise_actnorm(fresh)
before = {k: p.detach().clone() for k, p in fresh.named_parameters()}  # parameters, not buffers
fresh_optimizer = torch.optim.Adamax(fresh.parameters(), lr=cfg.lr, foreach=True)
train_loop(fresh, fresh_optimizer, 0, 1, [])  # step 0 only
first_update_size = max((p - before[k]).abs().max().item() for k, p in fresh.named_parameters())
