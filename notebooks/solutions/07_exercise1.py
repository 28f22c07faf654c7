def noise_positions(config):
    side = config.image_size // 2
    return sum((units - 1) * (side // 2**b) ** 2 for b, units in enumerate(config.block_config))


min_growth_5x = math.ceil((5 - 1) * 3072 / noise_positions(DenseFlowConfig.paper()))
