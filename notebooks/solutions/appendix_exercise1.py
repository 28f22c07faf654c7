dequantization_parts = {"context network": official_params("transforms.0.encoder.context_init")}
for j in (1, 3, 5, 7):  # the conditional couplings sit between the 1x1 convolutions of the flow
    key = f"transforms.0.encoder.transforms.{j}.coupling_net"
    dequantization_parts[f"coupling {j}"] = official_params(key)
