def my_sample(net, n, T, generator):
    noise = net.draw_noise(n, generator, sampling=True)  # the prior's draw, then the dropped halves
    z = net.prior.loc + T * torch.exp(net.prior.log_scale) * noise["prior"]
    dropped = [T * noise[f"transition{b}"] for b in range(len(net.blocks) - 1)]
    with torch.no_grad():
        return VariationalDequantization.quantize(net.decode(dropped + [z]))
