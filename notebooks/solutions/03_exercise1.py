def conv1x1_log_det(weight, height, width):
    LU, _ = torch.linalg.lu_factor(weight)  # W = P L U with a unit-diagonal L: |det W| = prod |U_kk|
    return height * width * torch.log(torch.diagonal(LU).abs()).sum()
