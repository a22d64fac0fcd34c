"""The bottleneck job: labelled image archives -> bottleneck features in TFRecords."""
