"""SemanticLens operators: what a vision model's components encode, in a foundation model's space.

    codec        image bytes in the lake (PNG out, any PIL format in)
    canonizers   zennit canonizers per architecture family (torchvision/timm ResNet, VGG, sequential CNN)
    components   stage 1: activations, LRP relevances, CRP heatmaps, streaming statistics
    topk         exact streaming top-k per component, mergeable across actors
    measures     clarity, polysemanticity, redundancy, labels, search (SemanticLens's definitions)
    compat       importing torchvision's Python parts next to the CPU torch build
"""
