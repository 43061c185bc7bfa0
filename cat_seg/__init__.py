"""cat-seg: CAT-Seg (Cost Aggregation for Open-Vocabulary Semantic Segmentation) on detectron2."""
