package dev.tessera.delta;

import io.delta.storage.HadoopFileSystemLogStore;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.s3a.AWSS3IOException;
import org.apache.hadoop.fs.s3a.RemoteFileChangedException;

/**
 * Delta log store for S3 that is safe with several writing drivers: a commit file is
 * written with S3's conditional PUT ({@code If-None-Match: *}, through hadoop-aws's
 * conditional create), so when two drivers race for the same version, S3 itself lets exactly
 * one win and the other gets {@link java.nio.file.FileAlreadyExistsException}, which Delta
 * turns into a retry on the next version or a conflict. Delta's default S3 store checks and
 * then writes inside one JVM only; its DynamoDB store needs AWS SDK v1 and a table.
 *
 * <p>Every writer of a table must use this store (Tessera's Spark sessions all do).
 */
public class S3ConditionalPutLogStore extends HadoopFileSystemLogStore {
  /** S3 answers 409 when two conditional writes of one key overlap: ask again. */
  private static final int CONFLICT_RETRIES = 5;

  public S3ConditionalPutLogStore(Configuration hadoopConf) {
    super(hadoopConf);
  }

  @Override
  public void write(Path path, Iterator<String> actions, Boolean overwrite, Configuration conf)
      throws IOException {
    List<String> lines = new ArrayList<>();
    actions.forEachRemaining(lines::add);
    FileSystem fs = path.getFileSystem(conf);
    for (int attempt = 0; ; attempt++) {
      try {
        writeOnce(fs, path, lines, overwrite);
        return;
      } catch (RemoteFileChangedException | org.apache.hadoop.fs.FileAlreadyExistsException e) {
        if (overwrite) {
          throw e;
        }
        throw new java.nio.file.FileAlreadyExistsException(path.toString()); // HTTP 412
      } catch (AWSS3IOException e) {
        if (overwrite || e.statusCode() != 409 || attempt >= CONFLICT_RETRIES) {
          throw e;
        }
        try {
          Thread.sleep(50L << attempt);
        } catch (InterruptedException interrupted) {
          Thread.currentThread().interrupt();
          throw new java.io.InterruptedIOException("interrupted while retrying " + path);
        }
      }
    }
  }

  private static void writeOnce(FileSystem fs, Path path, List<String> lines, boolean overwrite)
      throws IOException {
    FSDataOutputStream out;
    if (overwrite) {
      out = fs.create(path, true);
    } else {
      // createFile() returns a raw builder type: build() gives the stream as an Object.
      out = (FSDataOutputStream) fs.createFile(path)
          .overwrite(false)
          .must("fs.option.create.conditional.overwrite", true)
          .build();
    }
    try {
      for (String line : lines) {
        out.write((line + "\n").getBytes(StandardCharsets.UTF_8));
      }
    } finally {
      out.close(); // the PUT, with If-None-Match: * unless overwriting, happens here
    }
  }

  @Override
  public Boolean isPartialWriteVisible(Path path, Configuration conf) {
    return false; // one PUT: the file appears whole or not at all
  }
}
